"""The results strip (bilayer_jax/strip.py): layout, that its panels are the animator's own outputs, errors."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bilayer_jax import errors
from bilayer_jax import families
from bilayer_jax import strip
from bilayer_jax.data import samples
from bilayer_jax.face import images
from bilayer_jax.inference import video


def test_frames_are_evenly_spaced_over_the_window():
  every = list(video.read_video(samples.carphone_path(), 40))
  chosen = strip.chosen_frames(samples.carphone_path(), 10, 40, 4)
  for frame, index in zip(chosen, (10, 20, 29, 39)):
    np.testing.assert_array_equal(frame, every[index])


def test_panels_are_the_animators_crops_and_renders(params_dir, photo_file):
  size = 48
  picture = strip.make_strip(params_dir, photo_file, samples.carphone_path(), driver_start=30, driver_end=60,
                             frames=3, size=size, enhance=False, background='0,0,255', title='a / b')
  assert picture.shape == (2 * (size + strip.LABEL_HEIGHT), 4 * size, 3) and picture.dtype == np.uint8

  # The same renders through the animator directly: each result panel is its composite, resized.
  anim = families.animator_from_params(params_dir)
  avatar = anim.init_avatar(anim.preprocessor.source(video.read_still(photo_file)), enhance=False)
  driving = strip.chosen_frames(samples.carphone_path(), 30, 60, 3)
  rows = slice(2 * strip.LABEL_HEIGHT + size, None)
  for i, (_, crop, out) in enumerate(anim.drive(avatar, driving)):
    expected = images.resize_bicubic(anim.composite({k: v[None] for k, v in out.items()}, (0, 0, 255))[0], size)
    panel = picture[rows, (i + 1) * size:(i + 2) * size]
    assert np.abs(panel[20:].astype(int) - expected[20:]).max() <= 1  # below the label text
    driver_panel = picture[strip.LABEL_HEIGHT:strip.LABEL_HEIGHT + size, (i + 1) * size:(i + 2) * size]
    np.testing.assert_array_equal(driver_panel, images.resize_bicubic(np.ascontiguousarray(crop), size))
  # The three results differ (three poses), so the strip shows motion rather than one frame repeated.
  results = [picture[rows, (i + 1) * size:(i + 2) * size, :].astype(int) for i in range(3)]
  assert np.abs(results[0] - results[2]).mean() > 0.5


def test_bad_requests_are_one_line_errors_and_write_nothing(tmp_path):
  with pytest.raises(errors.InvalidArgumentError, match=r'2 frames in \[10, 12\), fewer than --frames 3'):
    strip.chosen_frames(samples.carphone_path(), 10, 12, 3)
  with pytest.raises(errors.InvalidArgumentError, match='--source_frame 500 is past the end'):
    strip.read_frame(samples.carphone_path(), 500)
  with pytest.raises(video.MediaError, match=r'x\.unknownext: cannot write the image'):
    video.write_image(tmp_path / 'x.unknownext', np.zeros((4, 4, 3), np.uint8))
  assert not list(tmp_path.iterdir())


def test_command_writes_the_png(params_dir, photo_file, tmp_path):
  out = tmp_path / 'strip.png'
  done = subprocess.run([sys.executable, '-m', 'bilayer_jax.strip', '--params', params_dir, '--source',
                         samples.carphone_path(), '--source_frame', '5', '--driver', samples.carphone_path(),
                         '--driver_start', '96', '--frames', '2', '--size', '32', '--out', str(out)],
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert Image.open(out).size == (3 * 32, 2 * (32 + strip.LABEL_HEIGHT))
  bad = subprocess.run([sys.executable, '-m', 'bilayer_jax.strip', '--params', params_dir, '--source',
                        str(tmp_path / 'missing.jpg'), '--driver', samples.carphone_path(), '--out',
                        str(tmp_path / 'x.png')], capture_output=True, text=True, check=False)
  error_lines = [line for line in bad.stderr.splitlines() if line.startswith('error:')]
  assert bad.returncode == errors.EXIT_USER_ERROR and 'Traceback' not in bad.stderr
  assert len(error_lines) == 1 and 'missing.jpg' in error_lines[0] and not (tmp_path / 'x.png').exists()


def test_notebook_strip_follows_the_runtime(params_dir, photo_file):
  """The demo notebook's picture: at most as many driver frames as the runtime animates."""
  from bilayer_jax.colab import runtime  # pylint: disable=g-import-not-at-top
  from bilayer_jax.colab import workflows  # pylint: disable=g-import-not-at-top
  rt = runtime.Runtime('cpu', 'CPU', 1, False, True, runtime.sizes_for('cpu', 1, smoke=True))
  picture = workflows.results_strip(params_dir, photo_file, samples.carphone_path(), rt, frames=50)
  assert picture.shape[1] == (rt.sizes.driver_frames + 1) * 128
