"""What the notebook runs on (CPU, GPU or TPU) and the sizes it picks for it.

`setup()` is the notebooks' first call after the install: it detects the runtime, quiets library logs (the
notebooks show progress bars instead), turns on the persistent compilation cache and prints what it found.
Setting BILAYER_JAX_NOTEBOOK_SMOKE=1 shrinks everything to a few steps and frames: CI executes the notebooks
that way (tests/test_colabs.py), the same cells a Colab user runs.
"""

import dataclasses
import logging as logging_std
import os
import sys
import warnings

from absl import logging
import jax

from bilayer_jax import xla_cpu

SMOKE_ENV = 'BILAYER_JAX_NOTEBOOK_SMOKE'


@dataclasses.dataclass(frozen=True)
class Sizes:
  """How much work each notebook does; chosen per runtime so every notebook ends in minutes."""
  base_steps: int  # train notebook: base stage, first session
  resume_steps: int  # train notebook: steps added when it resumes
  enhancer_steps: int  # train notebook: texture enhancer stage
  demo_base_steps: int  # demo/export notebooks: the demo model they train when given no params
  demo_enhancer_steps: int
  batch_size: int  # global batch of the demo config (a multiple of the device count)
  driver_frames: int  # driver frames animated
  eval_targets: int  # target frames per video in the notebook's evaluation
  calibration_frames: int  # driver frames whose poses calibrate int8 and check exports
  latency_runs: int  # timed calls per latency figure
  finetune_steps: int = 0  # train notebook, FSTH: fine-tuning steps on each held-out video's frames


# Colab's CPU runtime has 2 cores (for the demo config's step time there see
# docs/benchmarks.md#other-measurements-behind-code-choices); accelerators train longer.
_SIZES = {
    'cpu': Sizes(base_steps=200, resume_steps=100, enhancer_steps=50, demo_base_steps=60, demo_enhancer_steps=20,
                 batch_size=4, driver_frames=120, eval_targets=16, calibration_frames=60, latency_runs=20,
                 finetune_steps=100),
    'gpu': Sizes(base_steps=1000, resume_steps=500, enhancer_steps=300, demo_base_steps=400,
                 demo_enhancer_steps=100, batch_size=8, driver_frames=120, eval_targets=32, calibration_frames=60,
                 latency_runs=50, finetune_steps=300),
    'tpu': Sizes(base_steps=1000, resume_steps=500, enhancer_steps=300, demo_base_steps=400,
                 demo_enhancer_steps=100, batch_size=8, driver_frames=120, eval_targets=32, calibration_frames=60,
                 latency_runs=50, finetune_steps=300),
    'smoke': Sizes(base_steps=4, resume_steps=2, enhancer_steps=2, demo_base_steps=4, demo_enhancer_steps=2,
                   batch_size=4, driver_frames=6, eval_targets=2, calibration_frames=4, latency_runs=2,
                   finetune_steps=2),
}


@dataclasses.dataclass(frozen=True)
class Runtime:
  platform: str  # 'cpu', 'gpu' or 'tpu' (JAX's default backend)
  device_kind: str  # e.g. 'Tesla T4', 'TPU v2', 'cpu'
  num_devices: int
  in_colab: bool
  smoke: bool  # BILAYER_JAX_NOTEBOOK_SMOKE: CI's quick execution
  sizes: Sizes

  def describe(self) -> str:
    where = 'Colab' if self.in_colab else 'local Jupyter'
    mode = ' — smoke mode (CI sizes)' if self.smoke else ''
    return (f'{where} runtime: {self.num_devices} × {self.device_kind} ({self.platform.upper()}){mode}\n'
            f'sizes: {dataclasses.asdict(self.sizes)}')


def smoke_mode(environ=None) -> bool:
  value = (os.environ if environ is None else environ).get(SMOKE_ENV, '')
  return value.strip().lower() not in ('', '0', 'false', 'no')


def sizes_for(platform: str, num_devices: int, smoke: bool) -> Sizes:
  """The sizes for a runtime; the batch is rounded up to a multiple of the device count."""
  if platform not in ('cpu', 'gpu', 'tpu'):
    raise ValueError(f'platform {platform!r}: expected cpu, gpu or tpu')
  sizes = _SIZES['smoke' if smoke else platform]
  batch = -(-sizes.batch_size // num_devices) * num_devices
  return dataclasses.replace(sizes, batch_size=batch)


def detect() -> Runtime:
  devices = jax.devices()
  platform = devices[0].platform
  platform = 'gpu' if platform in ('gpu', 'cuda', 'rocm') else platform
  smoke = smoke_mode()
  return Runtime(platform=platform, device_kind=devices[0].device_kind, num_devices=len(devices),
                 in_colab='google.colab' in sys.modules, smoke=smoke,
                 sizes=sizes_for(platform, len(devices), smoke))


def quiet_logs() -> None:
  """Errors only from absl/TF/orbax, whose INFO and deprecation chatter (the TFLite converter's above all)
  would bury the notebooks' progress bars and results; bilayer_jax's own warnings still show."""
  logging.set_verbosity(logging.ERROR)
  for name in ('absl', 'orbax', 'tensorflow', 'jax'):
    logging_std.getLogger(name).setLevel(logging_std.ERROR)
  warnings.filterwarnings('ignore', category=UserWarning, module=r'tensorflow\.')


def setup() -> Runtime:
  """Chooses the XLA:CPU flags (before JAX starts), detects the runtime, quiets logs, enables the compilation
  cache; prints and returns the runtime."""
  from bilayer_jax import train  # pylint: disable=g-import-not-at-top
  xla_cpu.configure()
  quiet_logs()
  train.enable_compilation_cache()
  runtime = detect()
  print(runtime.describe())
  return runtime
