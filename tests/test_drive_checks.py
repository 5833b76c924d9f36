"""Driver checks of `drive` and `export`: the driver is opened before the model is loaded, drivers without
(enough) faces are user errors that write nothing, and the command line prints user errors as one line.

Drivers are short mp4s written here: blank frames, and scikit-image's astronaut (a real portrait).
"""

import pathlib
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import skimage.data

from bilayer_jax import drive as drive_cli
from bilayer_jax import errors
from bilayer_jax import export as export_cli
from bilayer_jax.inference import animator as animator_lib
from bilayer_jax.inference import preprocess
from bilayer_jax.inference import video

BLANK = np.full((512, 512, 3), 127, np.uint8)


@pytest.fixture(scope='module')
def drivers(tmp_path_factory):
  """{'faceless': 6 blank frames, 'partial': 4 blank then 2 with a face}, as mp4 paths."""
  folder = tmp_path_factory.mktemp('drivers')
  face = skimage.data.astronaut()
  clips = {'faceless': [BLANK] * 6, 'partial': [BLANK] * 4 + [face, face]}
  for name, frames in clips.items():
    video.write_mp4(folder / f'{name}.mp4', frames, fps=10)
  return {name: str(folder / f'{name}.mp4') for name in clips}


@pytest.fixture
def animator_loaded_once(monkeypatch):
  """drive() loads and compiles the model at every call (~4 s here); these tests reuse one animator."""
  loaded = {}
  load = animator_lib.Animator.from_params

  def from_params(params, **kwargs):
    if params not in loaded:
      loaded[params] = load(params, **kwargs)
    return loaded[params]
  monkeypatch.setattr(animator_lib.Animator, 'from_params', from_params)


def _drive(params_dir, photo_file, driver, out, **kwargs):
  return drive_cli.drive(params_dir, photo_file, driver, str(out), landmarks='dlib', segmentation='mediapipe_selfie',
                         display_size=64, progress=False, **kwargs)


def test_wrong_driver_or_flag_fails_before_the_params_are_loaded(photo_file, drivers, tmp_path):
  not_a_video = tmp_path / 'notes.mp4'
  not_a_video.write_text('not a video')
  for driver in (tmp_path / 'missing.mp4', not_a_video):
    start = time.perf_counter()
    # The params directory does not exist either: the error must be about the driver.
    with pytest.raises(video.MediaError, match=str(driver)):
      _drive(str(tmp_path / 'no_params'), photo_file, str(driver), tmp_path / 'out.mp4')
    with pytest.raises(video.MediaError, match=str(driver)):
      export_cli.export(str(tmp_path / 'no_params'), 'torch', str(tmp_path / 'a.pt'), photo_file, driver=str(driver))
    assert time.perf_counter() - start < 5
  with pytest.raises(preprocess.OptionError, match='--max_faceless_fraction 1.5: expected a fraction'):
    _drive(str(tmp_path / 'no_params'), photo_file, drivers['partial'], tmp_path / 'out.mp4', max_faceless_fraction=1.5)
  assert not list(tmp_path.glob('out*')) and not list(tmp_path.glob('a.pt*'))


@pytest.mark.slow  # 18 s: three driver videos through the CLI
@pytest.mark.usefixtures('animator_loaded_once')
def test_drivers_without_enough_faces_write_nothing(params_dir, photo_file, drivers, tmp_path):
  out = tmp_path / 'out.mp4'
  with pytest.raises(preprocess.DriverFaceError, match=r'faceless\.mp4: .*have no face') as e:
    _drive(params_dir, photo_file, drivers['faceless'], out)
  assert isinstance(e.value, errors.UserError)
  # 4 of 6 frames without a face: more than the default 0.5, known after the 4th frame.
  with pytest.raises(preprocess.DriverFaceError, match=r'partial\.mp4: 4 of its first 4 frames have no face, '
                     r'more than --max_faceless_fraction 0\.5 of its 6 frames'):
    _drive(params_dir, photo_file, drivers['partial'], out)
  assert not list(tmp_path.iterdir())  # no output, no temporary file
  summary = _drive(params_dir, photo_file, drivers['partial'], out, max_faceless_fraction=0.8, enhance=False)
  assert summary['frames'] == 6 and summary['frames_without_face'] == 4
  assert summary['coverage'] == '4 of 6 frames (67%) without a face'
  assert len(list(video.read_video(out))) == 6


def test_export_rejects_the_same_drivers(drivers):
  preprocessor = preprocess.FacePreprocessor(64, landmarks='dlib')
  # What export reads of a (bi-layer) animator: its preprocessor and what it renders from per driver frame.
  anim = types.SimpleNamespace(preprocessor=preprocessor, _driver_inputs=preprocessor.driver_poses)
  with pytest.raises(preprocess.DriverFaceError, match='faceless.mp4'):
    export_cli.driver_poses(anim, drivers['faceless'])
  with pytest.raises(preprocess.DriverFaceError, match='more than --max_faceless_fraction 0.5'):
    export_cli.driver_poses(anim, drivers['partial'])
  assert export_cli.driver_poses(anim, drivers['partial'], max_faceless_fraction=0.7).shape == (2, 136)
  # With the limit at 1.0 only a driver without any face fails, at the end.
  with pytest.raises(preprocess.DriverFaceError, match=r'no face found in any of its 6 frames by the dlib'):
    export_cli.driver_poses(anim, drivers['faceless'], max_faceless_fraction=1.0)


def test_cli_prints_a_user_error_as_one_line(photo_file, tmp_path):
  missing = tmp_path / 'missing.mp4'
  result = subprocess.run(
      [sys.executable, '-m', 'bilayer_jax.drive', f'--params={tmp_path / "no_params"}', f'--source={photo_file}',
       f'--driver={missing}', f'--out={tmp_path / "out.mp4"}'],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1 and str(missing) in lines[0], result.stderr
  assert 'Traceback' not in result.stderr
  assert not pathlib.Path(tmp_path / 'out.mp4').exists()
