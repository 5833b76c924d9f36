"""The drive command's end-to-end check, shared by the families' training tests."""

import pytest

from bilayer_jax import drive as drive_cli
from bilayer_jax import errors
from bilayer_jax.data import samples
from bilayer_jax.inference import video


def check_drive_without_enhancer(params_dir: str, photo_file: str, tmp_path) -> None:
  """Drives the photo with 5 frames of the in-package clip side by side ([source | driver | result] mp4), and
  checks that asking for a texture enhancer the family lacks is a user error."""
  out = tmp_path / 'driven.mp4'
  summary = drive_cli.drive(params_dir, photo_file, samples.carphone_path(), str(out), max_frames=5,
                            progress=False, side_by_side=True)
  assert summary['frames'] == 5 and not summary['enhanced'] and out.stat().st_size > 1000
  frames = list(video.read_video(out))
  assert len(frames) == 5 and frames[0].shape[1] == 3 * frames[0].shape[0]  # source | driver | result
  with pytest.raises(errors.InvalidArgumentError, match='no texture enhancer'):
    drive_cli.drive(params_dir, photo_file, samples.carphone_path(), str(tmp_path / 'x.mp4'), max_frames=2,
                    progress=False, enhance=True)
