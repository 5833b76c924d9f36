"""Shared pytest setup: quiet, hermetic caches and the parity fixtures of the original code."""

import os
import pathlib
import platform
import shutil
import tempfile

TEST_XLA_FLAGS = '--xla_cpu_max_isa=AVX2'  # see below
# Keep TF/matplotlib/torch caches out of $HOME and make TF quiet; tests never download anything.
_CACHE = pathlib.Path(tempfile.gettempdir()) / 'bilayer_jax_test_cache'
for var, sub in (('KERAS_HOME', 'keras'), ('MPLCONFIGDIR', 'mpl'), ('TORCH_HOME', 'torch')):
  os.environ.setdefault(var, str(_CACHE / sub))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# run.py started by tests shares the tests' compilation cache.
os.environ.setdefault('BILAYER_JAX_COMPILATION_CACHE', str(_CACHE / 'jax'))
# XLA:CPU's code generation changes how far float32 step gradients drift from float64 (feature-matching
# term; per-tensor worst error relative to max|ref|: 1e-4 to 8e-3 with AVX2 code depending on the CPU,
# 4.6e-2 with SSE4.2 code, while our float64 gradients match the original's). Tests pin the instruction set
# (before jax starts; CLI subprocesses inherit it) so the float32 bounds judge our code, not the CPU.
# BILAYER_JAX_TEST_NATIVE_ISA=1 runs the tests with the CPU's own instruction set (the bounds hold there too).
if (platform.machine().lower() in ('x86_64', 'amd64') and 'xla_cpu_max_isa' not in os.environ.get('XLA_FLAGS', '')
    and not os.environ.get('BILAYER_JAX_TEST_NATIVE_ISA')):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

from bilayer_jax import xla_cpu  # pylint: disable=g-import-not-at-top

xla_cpu.configure()  # what the entry points do (before JAX starts); CLI subprocesses inherit XLA_FLAGS

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

# Compile fast (as flax's own tests do); subprocess-based tests (the CLIs) still run fully optimised.
jax.config.update('jax_disable_most_optimizations', True)
# Share compiled executables between test processes and runs (XLA CPU compiles are the slow part).
jax.config.update('jax_compilation_cache_dir', str(_CACHE / 'jax'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'original_small'


@pytest.fixture(scope='session')
def fixtures_dir() -> pathlib.Path:
  return FIXTURES


@pytest.fixture(scope='session')
def enh_run_dir(tmp_path_factory) -> pathlib.Path:
  """The fixtures' enhancer run in the original's layout (args.txt + checkpoints/1_<net>.pth)."""
  run = tmp_path_factory.mktemp('enh_run')
  (run / 'checkpoints').mkdir()
  shutil.copy(FIXTURES / 'args_enh.txt', run / 'args.txt')
  for net in ('texture_enhancer', 'discriminator'):
    shutil.copy(FIXTURES / 'checkpoints' / f'1_{net}.pth', run / 'checkpoints')
  return run


@pytest.fixture(scope='session')
def small_run(enh_run_dir):
  """(config, variables, metadata) of the fixtures' base + enhancer runs, imported."""
  from bilayer_jax.convert import original  # pylint: disable=g-import-not-at-top
  return original.import_run(FIXTURES, 1, enh_run_dir, 1)


@pytest.fixture(scope='module')
def params_dir(small_run, tmp_path_factory) -> str:
  """The fixtures' runs as a bilayer_jax params directory."""
  from bilayer_jax import model_io  # pylint: disable=g-import-not-at-top
  cfg, variables, metadata = small_run
  return str(model_io.save_params(tmp_path_factory.mktemp('p') / 'params', cfg, variables, metadata))


@pytest.fixture(scope='session')
def photo_file(tmp_path_factory) -> str:
  """scikit-image's astronaut portrait as a JPEG file."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('photo') / 'astronaut.jpg'
  Image.fromarray(skimage.data.astronaut()).save(path)
  return str(path)


@pytest.fixture(scope='session')
def demo_data_dir(tmp_path_factory) -> str:
  """The demo dataset, built once per test session: xdist workers share one folder (the build holds a file
  lock, so one worker builds while the others wait)."""
  from data_prep import demo  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  root = (base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base) / 'shared_demo_data'
  root.mkdir(exist_ok=True)
  return demo.ensure_demo_dataset(str(root))


@pytest.fixture(scope='session')
def tiny_base_run(demo_data_dir, tmp_path_factory):
  """(workdir, summary) of a 4-step tiny base run with checkpoints at steps 2 and 4."""
  import train_utils  # pylint: disable=g-import-not-at-top
  from bilayer_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('uninterrupted')
  return workdir, loop.train_and_evaluate(train_utils.tiny_config(demo_data_dir, num_steps=4), str(workdir))


@pytest.fixture(scope='session')
def tiny_fsth_run(demo_data_dir, tmp_path_factory):
  """(workdir, summary) of a 4-step tiny FSTH meta-learning run with checkpoints at steps 2 and 4."""
  import train_utils  # pylint: disable=g-import-not-at-top
  from bilayer_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('fsth_run')
  return workdir, loop.train_and_evaluate(train_utils.tiny_fsth_config(demo_data_dir), str(workdir))



@pytest.fixture(scope='session')
def tiny_lpd_run(demo_data_dir, tmp_path_factory):
  """(workdir, summary) of a 4-step tiny LPD meta-learning run with checkpoints at steps 2 and 4."""
  import train_utils  # pylint: disable=g-import-not-at-top
  from bilayer_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('lpd_run')
  return workdir, loop.train_and_evaluate(train_utils.tiny_lpd_config(demo_data_dir), str(workdir))
