r"""Does the trainer learn? A fixed-budget run on the demo data, evaluated on held-out frames at regular steps.

    python bench/convergence.py --workdir runs/convergence [--config configs/demo.py:base] [--steps 3000] \
        [--eval_every 500] [--max_targets 8] [--set model.image_size=64 ...]

Trains `--config` (default: the bi-layer demo's base stage, 64²) for `--steps` steps with a checkpoint every
`--eval_every` steps (all kept), then runs the evaluation protocol (`bilayer_jax.evaluate`, the same code as
`run.py --mode=eval`) on each checkpoint: one-shot self-reenactment of the demo's held-out `test` frames of the
two training people (PSNR, SSIM, LPIPS, CSIM with dlib's descriptor) and, in the same runs, the baselines
`source_copy` (the source frame as the prediction) and `mean_image` (the per-pixel mean of the real targets).
Writes to WORKDIR:

* convergence.png: the metrics against training steps, the baselines as dashed lines, and the generator's
  and discriminator's adversarial losses and the total from the TensorBoard events;
* convergence.json and convergence.md: the numbers (and the wall-clock minutes of training and evaluation);
* examples.png: source | real target | prediction of the last checkpoint (the protocol's grid).

The goal of issue 26: beat `source_copy` on PSNR and LPIPS within the budget. `--set KEY=VALUE` overrides
config fields for ablations (values parsed as Python literals where they parse). The training resumes when
WORKDIR already holds checkpoints.
"""

import argparse
import ast
import glob
import importlib
import json
import os
import pathlib
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bilayer_jax import xla_cpu  # pylint: disable=g-import-not-at-top

xla_cpu.configure()  # before JAX starts, as the entry points do

import matplotlib  # pylint: disable=g-import-not-at-top

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

METRICS = (('psnr', 'PSNR (dB) ↑'), ('ssim', 'SSIM ↑'), ('lpips', 'LPIPS ↓'), ('csim_dlib', 'CSIM dlib ↑'))
LOSSES = ('loss/G_ADV', 'loss/D_ADV', 'loss/total')


def load_config(spec: str, overrides: list):
  """'configs/demo.py:base' -> its ConfigDict, with `KEY=VALUE` overrides applied."""
  path, _, arg = spec.partition(':')
  module = importlib.import_module(pathlib.Path(path).with_suffix('').as_posix().replace('/', '.'))
  config = module.get_config(arg or None)
  for item in overrides:
    key, _, text = item.partition('=')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node = config
    *parents, leaf = key.split('.')
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def train(config, workdir: pathlib.Path, steps: int, every: int) -> float:
  """Trains (or resumes) to `steps` with a checkpoint every `every` steps, all kept; wall-clock seconds."""
  from bilayer_jax.train import loop  # pylint: disable=g-import-not-at-top
  config.num_steps = steps
  config.log.checkpoint_every_steps = every
  config.log.keep_checkpoints = steps // every + 1
  config.log.eval_every_steps = every
  start = time.perf_counter()
  loop.train_and_evaluate(config, str(workdir))
  return time.perf_counter() - start


def evaluate_steps(config, workdir: pathlib.Path, steps: list, max_targets: int) -> dict:
  """{step: the protocol's self-reenactment summary and baselines} for each checkpoint."""
  from bilayer_jax import evaluate  # pylint: disable=g-import-not-at-top
  config.eval.metrics = tuple(name for name, _ in METRICS)
  config.eval.max_targets = max_targets
  config.eval.pose_identity = ''
  out = {}
  for step in steps:
    config.eval.checkpoint_step = step
    config.eval.name = f'step_{step:06d}'
    results = evaluate.evaluate(config, str(workdir), progress=False)
    out[step] = {'model': results['self_reenactment']['summary'], **results['baselines'],
                 'output_dir': results['output_dir']}
  return out


def loss_curves(workdir: pathlib.Path) -> dict:
  """{tag: [(step, value)]} of LOSSES from the run's TensorBoard event files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  curves = {tag: [] for tag in LOSSES}
  for path in sorted(glob.glob(str(workdir / 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag in curves:
          curves[value.tag].append((event.step, float(tf.make_ndarray(value.tensor))))
  return {tag: sorted(points) for tag, points in curves.items() if points}


def plot(evaluations: dict, losses: dict, path: pathlib.Path, title: str) -> None:
  steps = sorted(evaluations)
  fig, axes = plt.subplots(1, len(METRICS) + 1, figsize=(4 * (len(METRICS) + 1), 3.4))
  for ax, (name, label) in zip(axes, METRICS):
    ax.plot(steps, [evaluations[s]['model'][name] for s in steps], 'o-', label='model')
    for baseline, style in (('source_copy', 'r--'), ('mean_image', 'g:')):
      if name in evaluations[steps[-1]][baseline]:
        ax.axhline(evaluations[steps[-1]][baseline][name], linestyle=style[1:], color=style[0], label=baseline)
    ax.set_title(label)
    ax.set_xlabel('step')
  axes[0].legend(fontsize=8)
  for tag, points in losses.items():
    axes[-1].plot([p[0] for p in points], [p[1] for p in points], label=tag.split('/')[-1], linewidth=0.8)
  axes[-1].set_title('training losses')
  axes[-1].set_xlabel('step')
  axes[-1].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def markdown(evaluations: dict) -> str:
  header = '| step | ' + ' | '.join(label for _, label in METRICS) + ' |'
  lines = [header, '|' + '---|' * (len(METRICS) + 1)]
  for step in sorted(evaluations):
    lines.append(f'| {step} | ' + ' | '.join(f'{evaluations[step]["model"][n]:.3f}' for n, _ in METRICS) + ' |')
  last = evaluations[max(evaluations)]
  for baseline in ('source_copy', 'mean_image'):
    lines.append(f'| {baseline} | ' + ' | '.join(
        f'{last[baseline][n]:.3f}' if n in last[baseline] else '–' for n, _ in METRICS) + ' |')
  return '\n'.join(lines) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', type=pathlib.Path, default=pathlib.Path('runs/convergence'))
  parser.add_argument('--config', default='configs/demo.py:base')
  parser.add_argument('--steps', type=int, default=3000)
  parser.add_argument('--eval_every', type=int, default=500)
  parser.add_argument('--max_targets', type=int, default=8)
  parser.add_argument('--set', action='append', default=[], help='KEY=VALUE config override (repeatable)')
  args = parser.parse_args()
  from data_prep import demo  # pylint: disable=g-import-not-at-top
  config = load_config(args.config, args.set)
  demo.prepare(config)
  workdir = args.workdir.resolve()
  train_s = train(config, workdir, args.steps, args.eval_every)
  start = time.perf_counter()
  evaluations = evaluate_steps(config, workdir, list(range(args.eval_every, args.steps + 1, args.eval_every)),
                               args.max_targets)
  eval_s = time.perf_counter() - start
  title = f'{args.config} {" ".join(args.set)}: held-out frames of the demo\'s training people'
  plot(evaluations, loss_curves(workdir), workdir / 'convergence.png', title)
  shutil.copy(pathlib.Path(evaluations[max(evaluations)]['output_dir']) / 'examples.png', workdir / 'examples.png')
  table = markdown(evaluations)
  (workdir / 'convergence.md').write_text(table)
  (workdir / 'convergence.json').write_text(json.dumps(
      {'config': args.config, 'overrides': args.set, 'steps': args.steps, 'train_minutes': train_s / 60,
       'eval_minutes': eval_s / 60, 'evaluations': {str(k): v for k, v in evaluations.items()}}, indent=1))
  print(table)
  print(f'training {train_s / 60:.1f} min, evaluation {eval_s / 60:.1f} min; wrote {workdir}/convergence.png')


if __name__ == '__main__':
  main()
