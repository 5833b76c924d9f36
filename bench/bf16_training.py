r"""Is bfloat16 training stable? The demo base stage trained twice, float32 and bfloat16, same data and seed.

    python bench/bf16_training.py [--steps 100] [--every 10]

Runs `configs/demo.py` (base stage, 64², tiny widths, the offline VGG16 perceptual loss) through the real
trainer (`bilayer_jax.train.loop`) on the built-in demo dataset, once with `train.dtype=float32` and once
with `bfloat16` (compute in bf16; parameters, Adam moments and BN statistics stay float32), and prints the
total loss and the L1 term every --every steps side by side, the step time of each run and the final
held-out evaluation (PSNR, SSIM, LPIPS). Both runs see the same batches in the same order.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bilayer_jax import config as config_lib  # pylint: disable=g-import-not-at-top
from bilayer_jax import xla_cpu  # pylint: disable=g-import-not-at-top
from configs import demo  # pylint: disable=g-import-not-at-top
from data_prep import demo as demo_data  # pylint: disable=g-import-not-at-top


def train(dtype: str, steps: int, workdir: str) -> dict:
  from bilayer_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = demo.get_config('base')
  config.num_steps = steps
  config.train.dtype = dtype
  config.log.every_steps = 1
  config.log.eval_every_steps = steps
  config.log.checkpoint_every_steps = steps
  config.log.image_every_steps = 0
  demo_data.prepare(config)
  return loop.train_and_evaluate(config_lib.from_config_dict(config), workdir)


def main() -> None:
  xla_cpu.configure()
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--every', type=int, default=10)
  args = parser.parse_args()
  runs, seconds = {}, {}
  for dtype in ('float32', 'bfloat16'):
    with tempfile.TemporaryDirectory() as workdir:
      start = time.perf_counter()
      runs[dtype] = train(dtype, args.steps, workdir)
      seconds[dtype] = time.perf_counter() - start
  print(f'demo base stage, {args.steps} steps, same data and seed: float32 | bfloat16')
  print(f'{"step":>5} {"loss/total fp32":>16} {"bf16":>10} {"loss/G_L1 fp32":>15} {"bf16":>10}')
  for step in range(args.every, args.steps + 1, args.every):
    a, b = runs['float32']['metrics'][step], runs['bfloat16']['metrics'][step]
    print(f'{step:5d} {a["loss/total"]:16.4f} {b["loss/total"]:10.4f} {a["loss/G_L1"]:15.4f} {b["loss/G_L1"]:10.4f}')
  for dtype, run in runs.items():
    evaluation = ', '.join(f'{k.split("/")[-1]} {v:.3f}' for k, v in sorted(run['eval'].items()))
    print(f'{dtype:9}: {seconds[dtype]:.0f} s for the whole run (compile, steps, statistics, evaluation); '
          f'held-out {evaluation}')


if __name__ == '__main__':
  main()
