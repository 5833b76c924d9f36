"""Sets up a Colab (or any Jupyter) runtime for the notebooks: the pinned requirements, the JAX build for the
runtime's accelerator, and the segmentation model. Standard library only: it runs before anything is installed.

The notebooks' first cell clones the repository and calls `install()` from its root. Outside Colab nothing is
installed unless asked (`install(force=True)`): there the README's setup command is the way to install.
"""

import hashlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
from typing import Callable, List, Optional, Sequence

# Where the notebooks' "Open in Colab" badges and their install cell take the code from.
REPO_URL = 'https://github.com/bilayer-jax/bilayer_jax'
# torch is only used for .pth I/O and parity checks: its CPU build avoids gigabytes of CUDA libraries.
TORCH_CPU_INDEX = 'https://download.pytorch.org/whl/cpu'
# The Python version the pins in requirements.txt were checked on.
TESTED_PYTHON = (3, 11)
# Written after a successful install; holds a hash of requirements.txt and the accelerator.
MARKER = '.colab_installed'
# Modules whose versions change with the install: if the kernel imported one before, it must restart.
_RELOAD_SENSITIVE = ('numpy', 'jax', 'jaxlib', 'tensorflow', 'torch', 'flax', 'protobuf', 'google.protobuf')


def in_colab() -> bool:
  return 'google.colab' in sys.modules


def detect_accelerator(environ=None, nvidia_smi: Optional[str] = None, dev: str = '/dev') -> str:
  """'tpu', 'gpu' or 'cpu' for the machine this runs on, before JAX is installed."""
  environ = os.environ if environ is None else environ
  if environ.get('COLAB_TPU_ADDR') or environ.get('TPU_NAME') or environ.get('TPU_ACCELERATOR_TYPE') or \
      any(pathlib.Path(dev).glob('accel[0-9]*')) or any(pathlib.Path(dev).glob('vfio/[0-9]*')):
    return 'tpu'
  nvidia_smi = nvidia_smi if nvidia_smi is not None else shutil.which('nvidia-smi')
  if nvidia_smi and subprocess.run([nvidia_smi, '-L'], capture_output=True).returncode == 0:
    return 'gpu'
  return 'cpu'


def pinned_version(requirements: str, name: str) -> str:
  """The `name==X` pin of a requirements.txt text; ValueError naming the package when it is not pinned."""
  match = re.search(rf'^{re.escape(name)}==([^\s#;]+)', requirements, re.MULTILINE)
  if not match:
    raise ValueError(f'requirements.txt pins no version of {name!r}')
  return match.group(1)


def plan(repo_dir: os.PathLike, accelerator: str, python: str = sys.executable) -> List[List[str]]:
  """The commands that install everything for `accelerator`, run from `repo_dir` (the repository root)."""
  if accelerator not in ('cpu', 'gpu', 'tpu'):
    raise ValueError(f'accelerator {accelerator!r}: expected cpu, gpu or tpu')
  requirements = (pathlib.Path(repo_dir) / 'requirements.txt').read_text()
  pip = [python, '-m', 'pip', 'install', '-q']
  # Colab preinstalls `tensorflow`; `tensorflow-cpu` (pinned) owns the same files, so remove it first.
  commands = [[python, '-m', 'pip', 'uninstall', '-q', '-y', 'tensorflow'],
              pip + ['-r', 'requirements.txt', '--extra-index-url', TORCH_CPU_INDEX]]
  jax_version = pinned_version(requirements, 'jax')
  if accelerator == 'gpu':
    commands.append(pip + [f'jax[cuda12]=={jax_version}'])
  elif accelerator == 'tpu':
    commands.append(pip + [f'jax[tpu]=={jax_version}'])
  commands.append([python, '-m', 'data_prep.fetch_models'])
  return commands


def _fingerprint(repo_dir: pathlib.Path, accelerator: str) -> str:
  digest = hashlib.sha256((repo_dir / 'requirements.txt').read_bytes())
  digest.update(accelerator.encode())
  return digest.hexdigest()


def run_logged(command: List[str], cwd: str) -> None:
  """Runs one install command, keeping its output; on failure prints the output's tail and raises."""
  proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
  if proc.returncode != 0:
    print((proc.stdout + proc.stderr)[-4000:])
    raise subprocess.CalledProcessError(proc.returncode, command)


def install(repo_dir: Optional[os.PathLike] = None, accelerator: Optional[str] = None, force: bool = False,
            run: Callable[..., object] = run_logged, restart: Optional[Callable[[], None]] = None) -> bool:
  """Installs what the notebooks need once per runtime; returns whether anything was installed.

  Args:
    repo_dir: the repository root (default: the one this file is in).
    accelerator: 'cpu', 'gpu' or 'tpu' (default: detected).
    force: install outside Colab too (default: only on Colab; elsewhere use the README's setup command).
    run: runs one command (a list) in `repo_dir`; raises on failure.
    restart: called when modules the kernel had already imported were replaced (default on Colab: restart
      the runtime, which Colab does by itself when its kernel process exits).
  """
  repo = pathlib.Path(repo_dir or pathlib.Path(__file__).resolve().parents[2])
  if not (in_colab() or force):
    print('Not on Colab: using the installed environment (README: "The two commands" sets one up).')
    return False
  accelerator = accelerator or detect_accelerator()
  marker = repo / MARKER
  fingerprint = _fingerprint(repo, accelerator)
  if marker.exists() and marker.read_text() == fingerprint:
    print(f'bilayer_jax is already installed for {accelerator.upper()} in this runtime.')
    return False
  if sys.version_info[:2] != TESTED_PYTHON:
    print(f'Note: the pins were checked together on CPython {TESTED_PYTHON[0]}.{TESTED_PYTHON[1]}; this runtime '
          f'has {sys.version_info[0]}.{sys.version_info[1]}. If pip cannot resolve them, the output below says '
          'which package.')
  print(f'Installing bilayer_jax and its pinned requirements for {accelerator.upper()} (a few minutes)...')
  commands = plan(repo, accelerator)
  for i, command in enumerate(commands, 1):
    print(f'  [{i}/{len(commands)}] {" ".join(command[1:])}', flush=True)
    run(command, cwd=str(repo))
  marker.write_text(fingerprint)
  stale = sorted(m for m in _RELOAD_SENSITIVE if m in sys.modules)
  if stale:
    print(f'Installed. The kernel had already imported {", ".join(stale)}: restarting the runtime so the new '
          'versions load. Then run all cells again (this one finishes at once).')
    (restart or _restart_kernel)()
  else:
    print('Installed.')
  return True


def _restart_kernel() -> None:
  sys.stdout.flush()
  os.kill(os.getpid(), signal.SIGKILL)  # Colab restarts a kernel that exits


def main(argv: Sequence[str]) -> None:
  """`python -m bilayer_jax.colab.install [--force]`: the same install from a shell."""
  install(force='--force' in argv)


if __name__ == '__main__':
  main(sys.argv[1:])
