r"""LPD meta-learning step: ours against the official code's, in the same run.

    python bench/lpd_train_step.py [--reference PATH] [--steps 3] [--batch 2] [--k 2] [--image_size 256]

Ours: the trainer's step (`bilayer_jax.families.lpd.training.train_step`: ResNeXt-50 on B·K identity
frames, MobileNetV2 on B pose frames, the generator, the projection table normalised as one matrix, three
discriminator passes, every loss with the real VGG19 + VGG16-Face architectures (random weights: the FLOPs
are the real loss's), one Adam step per side, the EMA) jit-compiled on one device at the official size.
Reported: compile time, the median step time over --steps after one warm-up step, images/s, XLA's FLOP
count of the step and FLOP/s, its memory analysis (arguments + temporaries).

Baseline with --reference (a checkout of shrubb/latent-pose-reenactment): `runners.holycow.run_epoch` on one
batch per iteration with its own modules at the same size on the CPU, loaded by the LPD fixture generator's
loader (tests/fixtures/lpd_small/reference.py: torchvision's model definitions from the wheel, unpatched
ResNeXt/MobileNetV2, full-width VGG features with a small classifier that the loss never runs, random
weights), its Adams, torch.set_num_threads(cores); the same timing rule.
"""

import argparse
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
from bilayer_jax.families.lpd import objective  # pylint: disable=g-import-not-at-top
from bilayer_jax.families.lpd import training  # pylint: disable=g-import-not-at-top
from bilayer_jax.models import vgg  # pylint: disable=g-import-not-at-top
from bilayer_jax.models.lpd.config import LPDConfig  # pylint: disable=g-import-not-at-top

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'tests' / 'fixtures' / 'lpd_small'
WHEEL = '/opt/pypi-more/files/torchvision-0.28.0-cp311-cp311-manylinux_2_28_x86_64.whl'


def _median_time(fn, steps: int) -> float:
  fn()  # warm-up
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _images(rng, args):
  s = args.image_size
  return {'identity': rng.uniform(0, 1, (args.batch, args.k, s, s, 3)).astype(np.float32),
          'pose': rng.uniform(0, 1, (args.batch, s, s, 3)).astype(np.float32),
          'mask': rng.uniform(0, 1, (args.batch, s, s, 1)).astype(np.float32)}


def ours(args, images) -> dict:
  cfg = objective.StepConfig(model=LPDConfig(image_size=args.image_size), num_video_rows=args.batch)
  image = np.zeros((1, args.image_size, args.image_size, 3), np.float32)
  perceptual = {spec.name: vgg.VGGFeatures(spec).init(jax.random.PRNGKey(i), image)
                for i, spec in enumerate((vgg.LPD_VGG19, vgg.LPD_VGGFACE))}
  state = training.init_state(cfg, training.init_variables(cfg, 0, None))
  to_pipeline = lambda x: x * 2 - 1
  batch = {'source_imgs': to_pipeline(images['identity']), 'target_imgs': to_pipeline(images['pose'][:, None]),
           'pose_imgs': to_pipeline(images['pose'][:, None]), 'target_segs': images['mask'][:, None],
           'video_index': np.arange(args.batch, dtype=np.int32)}
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


def _full_size_torchvision(reference_lib, encoders) -> None:
  """The official encoders unpatched and full-width VGG features (their classifier shrunk: never run)."""
  root = pathlib.Path(sys.modules['torchvision.models'].__path__[0])
  full_vgg = reference_lib._exec_module(  # pylint: disable=protected-access
      'torchvision.models.vgg_features', root / 'vgg.py',
      reference_lib._patched_source(root / 'vgg.py', reference_lib.VGG_PATCH))  # pylint: disable=protected-access
  builders = dict(encoders)
  builders.update({'vgg19': full_vgg.vgg19, 'vgg16': full_vgg.vgg16})
  reference_lib.use_torchvision(builders)


def reference(args, images) -> float:
  """Median seconds of one official run_epoch iteration (see the module docstring)."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(FIXTURES))
  import reference as reference_lib  # pylint: disable=g-import-not-at-top  (the fixture generator's loader)
  torch.set_num_threads(os.cpu_count())
  with tempfile.TemporaryDirectory() as tmp:
    ref = reference_lib.load_reference(pathlib.Path(args.reference).resolve(), pathlib.Path(args.torchvision_wheel),
                                       pathlib.Path(tmp))
    _full_size_torchvision(reference_lib, ref.torchvision['full'])
    reference_lib.write_vgg_weights(pathlib.Path(tmp))
    ref_args = reference_lib.full_args()
    ref_args.vgg_weights_dir, ref_args.num_labels, ref_args.image_size = tmp, args.batch, args.image_size
    ref_args.detailed_metrics = False  # run_epoch's logging (runners/holycow.py default: on)
    nets = reference_lib.build_networks(ref, ref_args)
    module = ref.runner.TrainingModule(*nets.values(), reference_lib.build_criteria(
        ref, ref_args, reference_lib.META_CRITERIA), [], running_averages={}).train()
    optimizer_g = ref.runner.get_optimizer(nets['embedder'], nets['generator'], ref_args)
    optimizer_d = ref.discriminator.Wrapper.get_optimizer(nets['discriminator'], ref_args)
    nchw = lambda x: torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))
    mask = nchw(np.repeat(images['mask'], 3, axis=-1))[:, None]
    pose = nchw(images['pose'])[:, None]
    data = ({'enc_rgbs': nchw(images['identity']), 'pose_input_rgbs': pose, 'target_rgbs': pose * mask},
            {'real_segm': mask, 'label': torch.arange(args.batch)})
    return _median_time(lambda: ref.runner.run_epoch([data], module, optimizer_g, optimizer_d, 0, ref_args,
                                                     phase='train'), args.steps)


def main() -> None:
  xla_cpu.configure()
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--reference', default=None, help='checkout of shrubb/latent-pose-reenactment')
  parser.add_argument('--torchvision_wheel', default=WHEEL, help='torchvision wheel (its model definitions)')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--k', type=int, default=2)
  parser.add_argument('--image_size', type=int, default=256)
  args = parser.parse_args()
  print(f'LPD meta-learning step, {args.image_size}², official widths, batch {args.batch}, K {args.k}; '
        f'jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores')
  images = _images(np.random.default_rng(0), args)
  mine = ours(args, images)
  print(f'ours:      step {mine["step_s"]:.2f} s (median of {args.steps}), {args.batch / mine["step_s"]:.2f} images/s, '
        f'compile {mine["compile_s"]:.1f} s, {mine["flops"] / 1e12:.2f} TFLOP/step = '
        f'{mine["flops"] / mine["step_s"] / 1e9:.1f} GFLOP/s, XLA arguments + temporaries {mine["memory_gb"]:.2f} GB')
  if args.reference:
    theirs = reference(args, images)
    print(f'reference: step {theirs:.2f} s (median of {args.steps}); ours / reference = {mine["step_s"] / theirs:.2f}')


if __name__ == '__main__':
  main()
