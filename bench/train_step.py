r"""Training-step benchmark: steady-state step time, images/s, compile time, peak RSS (and FLOP/s, MFU).

    python bench/train_step.py [--configs paper,demo] [--steps 5] [--peak_tflops X]

Each configuration runs in its own subprocess (so that peak RSS is its own) through the real pieces of a
training run: `configs/*.py` -> StepConfig, host-side init, the jit-compiled train step of
`bilayer_jax.train.step` on a mesh over all local devices with the state donated, fp32:
  * paper: configs/paper_base.py (paper widths, 256^2, harmonics on, VGG19 + VGGFace perceptual loss with
    random weights of the real architectures: the FLOPs are those of the real loss), batch 1;
  * demo:  configs/demo.py base stage (64^2, tiny widths, ImageNet VGG16 perceptual loss), batch 4.
Reported: compile time (lower + compile, persistent cache off), median step time over --steps steps after
one warm-up step, images/s (= batch x target frames / step time), XLA's FLOP count of the step and the
achieved FLOP/s, MFU when --peak_tflops (the accelerator's dense fp32/tf32 peak) is given, and peak RSS.

Baseline: the original's base training step at the paper config on this machine class (2-core x86-64 CPU,
torch 2 threads, fp32, batch 1; spec §11.2): 7.1 s per step, 5.5 GB peak RSS for a whole `train.py`
iteration; the ratio column is ours / that figure (the goal is <= 0.8).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGINAL_STEP_S = 7.1  # spec §11.2, same machine class
ORIGINAL_PEAK_RSS_GB = 5.5


def _measure(name: str, steps: int) -> dict:
  """Runs in the child process: one configuration, returns its figures."""
  sys.path.insert(0, REPO)
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from bilayer_jax.models import vgg  # pylint: disable=g-import-not-at-top
  from bilayer_jax.train import setup, sharding  # pylint: disable=g-import-not-at-top
  from bilayer_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  from configs import demo, paper_base  # pylint: disable=g-import-not-at-top

  config = paper_base.get_config() if name == 'paper' else demo.get_config('base')
  config.batch_size = 1 if name == 'paper' else 4
  cfg = setup.step_config(config, 'base')
  rng = np.random.default_rng(0)
  b, s, c = config.batch_size, config.model.image_size, config.model.pse_in_channels
  img = lambda ch: rng.uniform(-1, 1, (b, 1, s, s, ch)).astype(np.float32)
  batch = {'source_imgs': img(3), 'source_segs': (img(1) > 0).astype(np.float32), 'source_stickmen': img(3),
           'source_poses': rng.uniform(-1, 1, (b, 1, c)).astype(np.float32), 'target_imgs': img(3),
           'target_segs': (img(1) > 0).astype(np.float32), 'target_stickmen': img(3),
           'target_poses': rng.uniform(-1, 1, (b, 1, c)).astype(np.float32)}
  perceptual = {}
  for net, weight in cfg.losses.perceptual:
    if weight and net == 'vgg16_imagenet_lpips':
      perceptual[net] = vgg.load_lpips_vgg16_params()
    elif weight:  # the real architecture with random weights (the weight files are not downloadable here)
      module = vgg.VGGFeatures(vgg.PERCEPTUAL_NETS[net])
      perceptual[net] = jax.jit(module.init)(jax.random.PRNGKey(0), np.zeros((1, s, s, 3), np.float32))

  mesh = sharding.make_mesh()
  variables = step_lib.init_variables(cfg, 0, step_lib.variable_shapes(cfg, batch))
  state_sh = sharding.state_shardings(jax.eval_shape(functools.partial(step_lib.init_state, cfg), variables), mesh)
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  state = jax.jit(functools.partial(step_lib.init_state, cfg), out_shardings=state_sh)(variables)
  batch, perceptual = jax.device_put(batch, batch_sh), jax.device_put(perceptual, repl)
  step_jit = jax.jit(functools.partial(step_lib.train_step, cfg), in_shardings=(state_sh, batch_sh, repl),
                     out_shardings=(state_sh, repl), donate_argnums=(0,))
  start = time.perf_counter()
  compiled = step_jit.lower(state, batch, perceptual).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0
  state, metrics = compiled(state, batch, perceptual)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, perceptual)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  assert np.isfinite(float(metrics['loss/total']))
  step_s = statistics.median(times)
  return {'config': name, 'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
          'batch': b, 'image_size': s, 'compile_s': compile_s, 'step_s': step_s, 'step_min_s': min(times),
          'images_per_s': b / step_s, 'flops': flops,
          'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='paper,demo')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--peak_tflops', type=float, default=0.0, help='accelerator peak, for MFU')
  parser.add_argument('--child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print('RESULT ' + json.dumps(_measure(args.child, args.steps)))
    return
  env = {**os.environ, 'JAX_ENABLE_COMPILATION_CACHE': 'false', 'TF_CPP_MIN_LOG_LEVEL': '2'}
  rows = []
  for name in args.configs.split(','):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', name, '--steps', str(args.steps)],
                          env=env, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
    if proc.returncode or not lines:
      sys.exit(f'{name}: benchmark failed\n{proc.stderr[-3000:]}')
    rows.append(json.loads(lines[-1][len('RESULT '):]))
  print(f'{"config":7} {"device":22} {"batch":>5} {"size":>5} {"compile s":>9} {"step s":>8} {"min s":>7} '
        f'{"img/s":>7} {"GFLOP/step":>10} {"GFLOP/s":>8} {"MFU":>6} {"peak RSS GB":>11} {"vs original":>11}')
  for r in rows:
    achieved = r['flops'] / r['step_s'] / 1e9
    mfu = f'{achieved / 1e3 / args.peak_tflops:6.1%}' if args.peak_tflops else '     -'
    ratio = f'{r["step_s"] / ORIGINAL_STEP_S:10.2f}x' if r['config'] == 'paper' else '          -'
    print(f'{r["config"]:7} {r["device"][:22]:22} {r["batch"]:5d} {r["image_size"]:5d} {r["compile_s"]:9.1f} '
          f'{r["step_s"]:8.3f} {r["step_min_s"]:7.3f} {r["images_per_s"]:7.2f} {r["flops"] / 1e9:10.1f} '
          f'{achieved:8.1f} {mfu} {r["peak_rss_gb"]:11.2f} {ratio}')
  print(f'original (spec §11.2, paper config, batch 1, 2-core CPU): {ORIGINAL_STEP_S} s/step, '
        f'{ORIGINAL_PEAK_RSS_GB} GB peak RSS')


if __name__ == '__main__':
  main()
