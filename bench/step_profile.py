r"""Where the CPU training step's time goes, ours against the original's, by kind of operation.

    python bench/step_profile.py [--config paper] [--steps 3] [--original_repo PATH] [--threads N]

Ours (in a child process, like bench/train_step.py): the compiled train step of --config (the same
`build_step`), its median step time, then every convolution and dot of its optimised HLO re-run in
isolation with the same shapes, window and layout (jit, best of 3), summed by kind:
  * convolution forward: the networks' convolutions;
  * convolution input gradient: the transposed convolutions of the backward pass;
  * convolution kernel gradient: XLA's weight-gradient convolutions (a window as large as their input);
  * dot: matrix products (dense layers, 1x1 convolutions, the per-identity projections, the backward's
    products).
"everything else" is the step time minus their sum: elementwise fusions, reductions (BatchNorm
statistics), transposes/copies and the executor. Ops run alone can be faster or slower than inside the step
(caches, the two threads' overlap), so the split is an estimate; the step time itself is measured.

The original (with --original_repo): bench/original_train_step.py --profile, i.e. torch.profiler's self
time of one base training iteration by operator kind (its OP_KINDS). Its iteration is the released
original's (discriminator not trained), so compare it with --config paper_released for like-for-like work
and with paper for the discriminator trained as intended.
"""

import argparse
import collections
import json
import os
import re
import statistics
import sys
import time

from bilayer_jax import xla_cpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

_DIMS = {'b': 'N', 'f': 'C', '0': 'H', '1': 'W', 'i': 'I', 'o': 'O'}
_CONV = re.compile(r'\n\s*(?:ROOT )?%([\w.\-]+) = \w+\[[\d,]*\]\{[^}]*\} convolution\(%([\w.\-]+), %([\w.\-]+)\), '
                   r'([^\n]*)')
_DOT = re.compile(r'\n\s*(?:ROOT )?%([\w.\-]+) = \w+\[[\d,]*\]\{[^}]*\} dot\(%([\w.\-]+), %([\w.\-]+)\), ([^\n]*)')
_SHAPE = re.compile(r'\n\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]')
_DTYPES = {'f32': 'float32', 'bf16': 'bfloat16', 'f16': 'float16', 'f64': 'float64'}


def _ints(text: str, sep: str = 'x'):
  return [int(v) for v in text.split(sep) if v]


def _conv_op(attrs: str, lhs_shape):
  """(jitted conv of two operands, kind) for an HLO convolution's attributes and its input's shape."""
  import jax  # pylint: disable=g-import-not-at-top
  window = re.search(r'window=\{([^}]*)\}', attrs).group(1)
  size = _ints(re.search(r'size=([\dx]+)', window).group(1))
  field = lambda name: re.search(name + r'=([\d_x\-]+)', window)
  pad = [tuple(_ints(p, '_')) for p in field('pad').group(1).split('x')] if field('pad') else [(0, 0)] * len(size)
  stride = _ints(field('stride').group(1)) if field('stride') else [1] * len(size)
  lhs_dilation = _ints(field('lhs_dilate').group(1)) if field('lhs_dilate') else None
  rhs_dilation = _ints(field('rhs_dilate').group(1)) if field('rhs_dilate') else None
  labels = re.search(r'dim_labels=([\w>\-]+)', attrs).group(1)
  lhs, rest = labels.split('_')
  rhs, out = rest.split('->')
  numbers = tuple(''.join(_DIMS[c] for c in spec) for spec in (lhs, rhs, out))
  groups = re.search(r'feature_group_count=(\d+)', attrs)
  op_name = re.search(r'op_name="([^"]*)"', attrs)
  spatial = [lhs_shape[lhs.index(axis)] for axis in '01'[:len(size)]]
  if max(size) > 1 and size == spatial:  # a window over the whole input: the kernel gradient XLA writes
    kind = 'convolution kernel gradient'
  elif op_name and 'transpose(jvp' in op_name.group(1):
    kind = 'convolution input gradient'
  else:
    kind = 'convolution forward'
  fn = jax.jit(lambda a, b: jax.lax.conv_general_dilated(
      a, b, stride, pad, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=numbers,
      feature_group_count=int(groups.group(1)) if groups else 1))
  return fn, kind


def _dot_op(attrs: str, unused_lhs_shape):
  import jax  # pylint: disable=g-import-not-at-top
  dims = lambda name: tuple(_ints(m.group(1), ',')) if (m := re.search(name + r'=\{([\d,]*)\}', attrs)) else ()
  numbers = ((dims('lhs_contracting_dims'), dims('rhs_contracting_dims')),
             (dims('lhs_batch_dims'), dims('rhs_batch_dims')))
  return jax.jit(lambda a, b: jax.lax.dot_general(a, b, numbers)), 'dot'


def census(hlo: str) -> dict:
  """Seconds of each kind of the HLO's top-level convolutions and dots, each run alone (best of 3)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  operands = {m.group(1): (_DTYPES.get(m.group(2), m.group(2)), tuple(_ints(m.group(3), ',')))
              for m in _SHAPE.finditer(hlo)}
  rng = np.random.default_rng(0)
  seconds, counts, timed = collections.defaultdict(float), collections.Counter(), {}
  ops = [(_conv_op, m) for m in _CONV.finditer(hlo)] + [(_dot_op, m) for m in _DOT.finditer(hlo)]
  for make, match in ops:
    inputs = tuple(operands[match.group(i)] for i in (2, 3))
    fn, kind = make(match.group(4), inputs[0][1])
    # Identical ops (same kind, operands and attributes but the metadata) are timed once.
    key = (kind, inputs, re.sub(r', metadata=\{.*', '', match.group(4)))
    if key not in timed:
      args = [jax.numpy.asarray(rng.standard_normal(shape), dtype) for dtype, shape in inputs]
      jax.block_until_ready(fn(*args))
      times = []
      for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
      timed[key] = min(times)
    seconds[kind] += timed[key]
    counts[kind] += 1
  return {'seconds': dict(seconds), 'counts': dict(counts), 'distinct_ops': len(timed)}


def _profile_ours(name: str, steps: int) -> dict:
  """Runs in the child process."""
  compiled, state, batch, perceptual, _, _ = train_step.build_step(name)
  times, _, _ = train_step.time_steps(compiled, state, batch, perceptual, steps)
  return {'config': name, 'step_s': statistics.median(times), **census(compiled.as_text())}


def _print(ours: dict, original) -> None:
  kinds = ('convolution forward', 'convolution input gradient', 'convolution kernel gradient', 'dot')
  seconds = ours['seconds']
  print(f'ours: {ours["config"]}, step {ours["step_s"]:.2f} s (median); its convolutions and dots run alone:')
  for kind in kinds:
    print(f'  {kind:30} {seconds.get(kind, 0.0):7.2f} s  ({ours["counts"].get(kind, 0)} ops)')
  rest = ours['step_s'] - sum(seconds.values())
  print(f'  {"everything else (by difference)":30} {rest:7.2f} s')
  if original:
    print(f'original: iteration {original["step_s"]:.2f} s (median; released code, D not trained); '
          f'torch.profiler self time of one iteration ({original["op_kind_s"]["iteration (profiled)"]:.2f} s):')
    for kind, value in original['op_kind_s'].items():
      if kind != 'iteration (profiled)':
        print(f'  {kind:30} {value:7.2f} s')


def main():
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='paper', choices=train_step.CONFIGS)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--original_repo', default=None, help='checkout of saic-violet/bilayer-model')
  parser.add_argument('--threads', type=int, default=os.cpu_count(), help='torch threads of the original')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print('RESULT ' + json.dumps(_profile_ours(args.config, args.steps)))
    return
  if args.original_repo and not os.path.isfile(os.path.join(args.original_repo, 'runners', 'default.py')):
    sys.exit(f'--original_repo {args.original_repo}: not a checkout of saic-violet/bilayer-model '
             '(expected runners/default.py in it)')
  env = {**os.environ, 'JAX_ENABLE_COMPILATION_CACHE': 'false', 'TF_CPP_MIN_LOG_LEVEL': '2'}
  ours = train_step.run_child([sys.executable, os.path.abspath(__file__), '--child', '--config', args.config,
                               '--steps', str(args.steps)], env, args.config)
  original = None
  if args.original_repo:
    original = train_step.measure_original(args.original_repo, args.steps, args.threads, env, profile=True)
  _print(ours, original)


if __name__ == '__main__':
  main()
