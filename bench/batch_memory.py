r"""How many images fit per device? The paper step's compiled memory at several per-device batches.

    python bench/batch_memory.py [--batches 1,2,4] [--budgets 16,24,40,80] [--config paper]

Compiles (does not run) the bi-layer paper step with the discriminator trained (`configs/paper_base.py`:
256², VGG19 + VGGFace perceptual loss of the real architectures) on one device for each per-device batch,
reads XLA's memory analysis (arguments + outputs + temporaries − aliased + code: the buffers the step
holds at its peak; `bench/train_step.py`), fits memory = fixed + per-image × batch by least squares and
prints the largest per-device batch that fits each budget (GB). The compiled memory is what XLA plans
for this backend (here the CPU); a GPU's or TPU's compiler plans its own buffers, so confirm there when
one is at hand. `--config paper_bf16` measures `train.dtype=bfloat16`.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position  (bench/train_step.py)
from bilayer_jax import xla_cpu  # pylint: disable=g-import-not-at-top,wrong-import-position


def compiled_memory(name: str, batch: int) -> float:
  """Device GB of the compiled step of config `name` at per-device batch `batch`."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from bilayer_jax.families.bilayer import objective as step_lib  # pylint: disable=g-import-not-at-top
  from bilayer_jax.families.bilayer import setup  # pylint: disable=g-import-not-at-top
  from bilayer_jax.train import sharding  # pylint: disable=g-import-not-at-top
  from configs import paper_base  # pylint: disable=g-import-not-at-top
  config = paper_base.get_config()
  config.batch_size = batch
  if name.endswith('_bf16'):
    config.train.dtype = 'bfloat16'
  cfg = setup.step_config(config, 'base')
  s = config.model.image_size
  data = train_step._random_batch(batch, s, config.model.pse_in_channels)  # pylint: disable=protected-access
  perceptual = train_step._perceptual_params(cfg, s)  # pylint: disable=protected-access
  shapes = step_lib.variable_shapes(cfg, data)
  state = jax.eval_shape(functools.partial(step_lib.init_state, cfg), shapes)
  # Lowered as bench/train_step.py and the trainer do (explicit shardings, the state donated and aliased).
  mesh = sharding.make_mesh(jax.devices()[:1])
  state_sh, batch_sh, repl = sharding.state_shardings(state, mesh), sharding.batch_sharding(mesh), sharding.replicated(
      mesh)
  compiled = jax.jit(functools.partial(step_lib.train_step, cfg), in_shardings=(state_sh, batch_sh, repl),
                     out_shardings=(state_sh, repl), donate_argnums=(0,)).lower(state, data, perceptual).compile()
  return train_step._xla_memory(compiled)['device_gb']  # pylint: disable=protected-access


def main() -> None:
  xla_cpu.configure()  # before JAX starts, as every entry point and bench/train_step.py
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batches', default='1,2,4')
  parser.add_argument('--budgets', default='16,24,40,80')
  parser.add_argument('--config', default='paper', choices=('paper', 'paper_bf16'))
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(',')]
  memory = [compiled_memory(args.config, b) for b in batches]
  print(f'{args.config}: compiled step memory per device (GB)')
  for b, gb in zip(batches, memory):
    print(f'  batch {b:3d}: {gb:7.2f}')
  per_image, fixed = np.polyfit(batches, memory, 1)
  print(f'fit: {fixed:.2f} GB + {per_image:.2f} GB per image')
  for budget in (float(b) for b in args.budgets.split(',')):
    print(f'  {budget:4.0f} GB budget: up to {int((budget - fixed) // per_image)} images per device')


if __name__ == '__main__':
  main()
