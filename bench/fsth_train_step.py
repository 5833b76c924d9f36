r"""FSTH meta-learning step: ours against the reference implementation's, in the same run.

    python bench/fsth_train_step.py [--reference PATH] [--steps 3] [--width_divisor 1] [--batch 2] [--k 8]

Ours: the trainer's step (`bilayer_jax.families.fsth.training.train_step`: embed N·K frames, generate, the
E+G Adam step, two discriminator Adam steps, the per-video rows gathered and scattered) jit-compiled on
one device at the reference's size (224² frames padded to 256², widths 64 -> 512, batch 2, K = 8,
`params/params.py`), with the content loss on VGG19 + VGGFace of the real architectures (random weights:
the FLOPs are the real loss's). Reported: compile time, the median step time over --steps after one
warm-up step, images/s (batch / step time), XLA's FLOP count of the step and FLOP/s, and its memory
analysis (arguments + temporaries).

Baseline with --reference (a checkout of vincent-thevenin/Realistic-Neural-Talking-Head-Models): one
iteration of its `train.py` body with its own modules at the same size on the CPU, built by the FSTH
fixture generator's loader (tests/fixtures/fsth_small/generate_step.py: its torchvision VGG19 and VGGFace
stand-ins with random weights, `torch.cuda.current_device` answered on the CPU; README there), persistent
Adams, torch.set_num_threads(cores); the same timing rule. `--width_divisor` shrinks both alike.
"""

import argparse
import dataclasses
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bilayer_jax import xla_cpu  # pylint: disable=g-import-not-at-top
from bilayer_jax.families.fsth import objective  # pylint: disable=g-import-not-at-top
from bilayer_jax.families.fsth import training  # pylint: disable=g-import-not-at-top
from bilayer_jax.models import vgg  # pylint: disable=g-import-not-at-top
from bilayer_jax.models.fsth.config import FSTHConfig  # pylint: disable=g-import-not-at-top

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'tests' / 'fixtures' / 'fsth_small'


def _median_time(fn, steps: int) -> float:
  fn()  # warm-up
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _batch(rng, batch: int, k: int, size: int):
  image = lambda n: rng.uniform(-1, 1, (batch, n, size, size, 3)).astype(np.float32)
  return {'source_imgs': image(k), 'source_stickmen': image(k), 'target_imgs': image(1),
          'target_stickmen': image(1), 'video_index': np.arange(batch, dtype=np.int32)}


def ours(args) -> dict:
  divisor = args.width_divisor
  specs = {name: dataclasses.replace(spec, width_divisor=divisor)
           for name, spec in (('vgg19', vgg.FSTH_VGG19), ('vggface', vgg.FSTH_VGGFACE))}
  cfg = objective.MetaStepConfig(model=FSTHConfig(width=64 // divisor), num_video_rows=args.batch, **specs)
  image = np.zeros((1, cfg.model.image_size, cfg.model.image_size, 3), np.float32)
  perceptual = {spec.name: vgg.VGGFeatures(spec).init(jax.random.PRNGKey(i), image)
                for i, spec in enumerate(specs.values())}
  state = training.init_state(cfg, training.init_variables(cfg, 0, None))
  batch = _batch(np.random.default_rng(0), args.batch, args.k, cfg.model.image_size)
  start = time.perf_counter()
  compiled = jax.jit(lambda s, b, p: training.train_step(cfg, s, b, p), donate_argnums=(0,)).lower(
      state, batch, perceptual).compile()
  compile_s = time.perf_counter() - start
  holder = {'state': state}

  def step():
    holder['state'], metrics = compiled(holder['state'], batch, perceptual)
    jax.block_until_ready(metrics)
  seconds = _median_time(step, args.steps)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  return {'step_s': seconds, 'compile_s': compile_s, 'flops': float(cost.get('flops', 0.0)),
          'memory_gb': (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**30}


def reference(args) -> float:
  """Median seconds of one iteration of the reference's train.py body (see the module docstring)."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(FIXTURES))
  import generate_step  # pylint: disable=g-import-not-at-top  (the fixture generator's loaders)
  torch.set_num_threads(os.cpu_count())
  with tempfile.TemporaryDirectory() as tmp:
    nets, criterion, d_real, d_fake = generate_step.build(pathlib.Path(args.reference), args.width_divisor,
                                                          torch.float32, tmp, pathlib.Path(tmp))
    embedder, generator, discriminator = nets['embedder'], nets['generator'], nets['discriminator']
    for net in nets.values():
      net.train()
    rng = np.random.default_rng(0)
    f_lm = torch.from_numpy(rng.uniform(0, 1, (args.batch, args.k, 2, 3, 224, 224)).astype(np.float32))
    x, g_y = f_lm[:, 0, 0], f_lm[:, 0, 1]
    discriminator.load_W_i(torch.from_numpy(rng.normal(0, 1, (512 // args.width_divisor, args.batch))
                                            .astype(np.float32)))
    optimizer_g = torch.optim.Adam(list(embedder.parameters()) + list(generator.parameters()), lr=5e-5)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4)

    def iteration():
      optimizer_g.zero_grad()
      optimizer_d.zero_grad()
      compact = f_lm.view(-1, *f_lm.shape[-4:])
      e_vectors = embedder(compact[:, 0], compact[:, 1]).view(args.batch, args.k, -1, 1)
      x_hat = generator(g_y, e_vectors.mean(dim=1))
      r_hat, fake_features = discriminator(x_hat, g_y, None)
      with torch.no_grad():
        _, real_features = discriminator(x, g_y, None)
      criterion(x, x_hat, r_hat, real_features, fake_features, e_vectors, discriminator.W_i, None).backward()
      optimizer_g.step()
      fake = x_hat.detach()
      for _ in range(2):
        optimizer_d.zero_grad()
        (d_fake(discriminator(fake, g_y, None)[0]) + d_real(discriminator(x, g_y, None)[0])).backward()
        optimizer_d.step()
    return _median_time(iteration, args.steps)


def main() -> None:
  xla_cpu.configure()
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--reference', default=None, help='checkout of the FSTH reference implementation')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--width_divisor', type=int, default=1)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--k', type=int, default=8)
  args = parser.parse_args()
  print(f'FSTH meta-learning step, 224² (padded to 256²), width {64 // args.width_divisor}, batch {args.batch}, '
        f'K {args.k}; jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores')
  mine = ours(args)
  print(f'ours:      step {mine["step_s"]:.2f} s (median of {args.steps}), {args.batch / mine["step_s"]:.2f} images/s, '
        f'compile {mine["compile_s"]:.1f} s, {mine["flops"] / 1e12:.2f} TFLOP/step = '
        f'{mine["flops"] / mine["step_s"] / 1e9:.1f} GFLOP/s, XLA arguments + temporaries {mine["memory_gb"]:.2f} GB')
  if args.reference:
    theirs = reference(args)
    print(f'reference: step {theirs:.2f} s (median of {args.steps}); ours / reference = {mine["step_s"] / theirs:.2f}')


if __name__ == '__main__':
  main()
