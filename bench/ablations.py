r"""What limits the demo model? Named variants of `bench/convergence.py`, trained and compared on one protocol.

    python bench/ablations.py --root runs/ablations [--steps 1500] [--eval_every 750] [--only no_gan,wide_gen]

Each variant is `configs/demo.py:base` (64², batch 4) with a few config overrides (VARIANTS below); each is
trained and evaluated by `bench/convergence.py` into ROOT/<variant> (held-out frames of the demo's two
training people, PSNR/SSIM/LPIPS/CSIM, the `source_copy` and `mean_image` baselines). A variant whose
convergence.json already covers --steps is not run again (so a longer run, e.g. the 3000-step baseline,
can be reused). Writes ROOT/ablations.png (the metrics of every variant against training steps, the baselines
dashed) and ROOT/ablations.md (each variant at --steps, and at its last evaluated step when later). The
variants run one after the other; on 2 CPU cores each 1500-step variant takes 13-20 minutes (batch 8: 32).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # pylint: disable=g-import-not-at-top

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

NO_GAN = ('loss.adv_loss_weight=0.0', 'loss.fem_loss_weight=0.0')
# Twice the channels of the identity embedder and texture generator, 2-4x the inference generator's; the
# projector shapes tie these widths together (config_checks), hence all six.
WIDE = ('model.emb_num_channels=16', 'model.emb_max_channels=64', 'model.tex_num_channels=16',
        'model.tex_max_channels=64', 'model.inf_num_channels=8', 'model.inf_max_channels=32')
VARIANTS = {
    'baseline': (),
    'no_gan': NO_GAN,  # no adversarial and feature-matching terms: does the discriminator help at all here?
    'd_lr_quarter': ('optim.lrs.discriminator=5e-5',),  # a slower discriminator: does it still saturate?
    'wide_gen': WIDE,  # generator capacity
    'batch8': ('batch_size=8',),  # twice the images per step (and per minute of compute: about 1.7x the time)
    'wide_no_gan': WIDE + NO_GAN,
}
METRICS = (('psnr', 'PSNR (dB) ↑'), ('ssim', 'SSIM ↑'), ('lpips', 'LPIPS ↓'))


def evaluated_steps(workdir: pathlib.Path) -> dict:
  """{step: evaluation} of a finished convergence run, or {} when there is none."""
  path = workdir / 'convergence.json'
  if not path.exists():
    return {}
  return {int(k): v for k, v in json.loads(path.read_text())['evaluations'].items()}


def run_variant(name: str, workdir: pathlib.Path, steps: int, eval_every: int) -> None:
  """Trains and evaluates one variant with bench/convergence.py (resuming what is already there)."""
  command = [sys.executable, str(pathlib.Path(__file__).with_name('convergence.py')), '--workdir', str(workdir),
             '--steps', str(steps), '--eval_every', str(eval_every)]
  for override in VARIANTS[name]:
    command += ['--set', override]
  print(f'{name}: {" ".join(command[1:])}', flush=True)
  subprocess.run(command, check=True)


def plot(results: dict, path: pathlib.Path) -> None:
  fig, axes = plt.subplots(1, len(METRICS), figsize=(4.4 * len(METRICS), 3.6))
  for ax, (metric, label) in zip(axes, METRICS):
    for name, evaluations in results.items():
      steps = sorted(evaluations)
      ax.plot(steps, [evaluations[s]['model'][metric] for s in steps], 'o-', label=name, markersize=3)
    last = next(iter(results.values()))
    baseline = last[max(last)]['source_copy'][metric]
    ax.axhline(baseline, color='r', linestyle='--', label='source_copy')
    ax.set_title(label)
    ax.set_xlabel('step')
  axes[0].legend(fontsize=7)
  fig.suptitle('configs/demo.py:base variants: held-out frames of the demo\'s training people', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def markdown(results: dict, steps: int) -> str:
  lines = ['| variant | overrides | step | PSNR ↑ | SSIM ↑ | LPIPS ↓ | CSIM dlib ↑ |', '|---|---|---|---|---|---|---|']
  for name, evaluations in results.items():
    for step in sorted({steps, max(evaluations)}):
      if step in evaluations:
        m = evaluations[step]['model']
        lines.append(f'| {name} | {" ".join(VARIANTS[name]) or "–"} | {step} | {m["psnr"]:.2f} | '
                     f'{m["ssim"]:.3f} | {m["lpips"]:.3f} | {m["csim_dlib"]:.3f} |')
  last = next(iter(results.values()))
  copy = last[max(last)]['source_copy']
  lines.append(f'| source_copy | | | {copy["psnr"]:.2f} | {copy["ssim"]:.3f} | {copy["lpips"]:.3f} | – |')
  return '\n'.join(lines) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--root', type=pathlib.Path, default=pathlib.Path('runs/ablations'))
  parser.add_argument('--steps', type=int, default=1500)
  parser.add_argument('--eval_every', type=int, default=750)
  parser.add_argument('--only', default='', help='comma-separated variant names (default: all)')
  args = parser.parse_args()
  names = [n for n in args.only.split(',') if n] or list(VARIANTS)
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    parser.error(f'--only: unknown variants {unknown}; known: {", ".join(VARIANTS)}')
  results = {}
  for name in names:
    workdir = args.root.resolve() / name
    if max(evaluated_steps(workdir), default=0) < args.steps:
      run_variant(name, workdir, args.steps, args.eval_every)
    results[name] = evaluated_steps(workdir)
  plot(results, args.root / 'ablations.png')
  table = markdown(results, args.steps)
  (args.root / 'ablations.md').write_text(table)
  print(table)
  print(f'wrote {args.root}/ablations.png')


if __name__ == '__main__':
  main()
