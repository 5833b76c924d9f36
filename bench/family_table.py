r"""The three families side by side on the demo data: train each demo config, evaluate each with one protocol.

    python bench/family_table.py --workdir runs/family_table [--steps 600] [--max_targets 8]

For bi-layer (`configs/demo.py:base`, the base stage), FSTH (`configs/fsth_demo.py`) and LPD
(`configs/lpd_demo.py`): `run.py` trains `--steps` steps (checkpoints, logs, params in WORKDIR/<family>; an
existing run resumes), then `python -m bilayer_jax.evaluate` runs the evaluation protocol on the demo's held-out
`test` split (frames of the two training people never trained on): one-shot self-reenactment against the
real frame with the `source_copy` and `mean_image` baselines, cross-identity reenactment between the two
people, and the LPD paper's pose/identity errors. Prints a markdown table and writes it, with the raw
results, to WORKDIR/table.md and WORKDIR/table.json. Wall-clock minutes include compilation.

The LPD demo reads the demo data in the latent-pose crop (the official face-box rule), the other two the
bi-layer landmark crop: same people, frames and splits, different framing, so image metrics compare
families on their own data, not pixel for pixel.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
FAMILIES = (('bilayer', 'configs/demo.py:base'), ('fsth', 'configs/fsth_demo.py'), ('lpd', 'configs/lpd_demo.py'))
COLUMNS = (  # (header, section, key)
    ('PSNR ↑', 'self', 'psnr'), ('SSIM ↑', 'self', 'ssim'), ('LPIPS ↓', 'self', 'lpips'),
    ('PSNR source_copy', 'source_copy', 'psnr'), ('LPIPS source_copy', 'source_copy', 'lpips'),
    ('CSIM self ↑', 'self', 'csim_dlib'), ('CSIM cross ↑', 'cross', 'csim_dlib'), ('NME cross ↓', 'cross', 'nme_dlib'),
    ('identity error ↓', 'pose_identity', 'identity_error_dlib'), ('pose error ↓', 'pose_identity', 'pose_error_dlib'))


def _run(args, log: pathlib.Path) -> float:
  """Runs a command (output to `log`); returns its wall-clock seconds; exits with its tail on failure."""
  start = time.perf_counter()
  with open(log, 'a') as out:
    proc = subprocess.run(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
  if proc.returncode:
    sys.exit(f'{" ".join(args)} failed ({proc.returncode}); see {log}:\n' + log.read_text()[-3000:])
  return time.perf_counter() - start


def train_and_evaluate(family: str, config: str, workdir: pathlib.Path, steps: int, max_targets: int) -> dict:
  workdir.mkdir(parents=True, exist_ok=True)
  common = [f'--config={REPO / config}', f'--workdir={workdir}']
  train_s = _run([sys.executable, 'run.py', *common, f'--config.num_steps={steps}',
                  f'--config.log.checkpoint_every_steps={steps}', f'--config.log.eval_every_steps={steps}'],
                 workdir / 'train.log')
  eval_s = _run([sys.executable, '-m', 'bilayer_jax.evaluate', *common, f'--config.eval.max_targets={max_targets}',
                 '--config.eval.name=table'], workdir / 'eval.log')
  results = json.loads((workdir / 'eval' / 'table' / 'results.json').read_text())
  return {'family': family, 'config': config, 'steps': steps, 'train_minutes': train_s / 60,
          'eval_minutes': eval_s / 60, 'self': results['self_reenactment']['summary'],
          'source_copy': results['baselines']['source_copy'],
          'cross': results['cross_reenactment'].get('summary', {}), 'pose_identity': results['pose_identity']}


def _cell(value) -> str:
  return f'{value:.3f}' if isinstance(value, float) else ('–' if value is None else str(value))


def markdown(rows: list) -> str:
  header = '| family | steps | train min | ' + ' | '.join(h for h, _, _ in COLUMNS) + ' |'
  lines = [header, '|' + '---|' * (3 + len(COLUMNS))]
  for row in rows:
    cells = [_cell(row[section].get(key)) for _, section, key in COLUMNS]
    lines.append(f'| {row["family"]} | {row["steps"]} | {row["train_minutes"]:.1f} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', type=pathlib.Path, default=pathlib.Path('runs/family_table'))
  parser.add_argument('--steps', type=int, default=600, help='training steps of each family')
  parser.add_argument('--max_targets', type=int, default=8, help='target frames per held-out video')
  parser.add_argument('--families', default=','.join(f for f, _ in FAMILIES))
  args = parser.parse_args()
  chosen = args.families.split(',')
  rows = [train_and_evaluate(family, config, args.workdir.resolve() / family, args.steps, args.max_targets)
          for family, config in FAMILIES if family in chosen]
  table = markdown(rows)
  os.makedirs(args.workdir, exist_ok=True)
  (args.workdir / 'table.md').write_text(table)
  (args.workdir / 'table.json').write_text(json.dumps(rows, indent=1, default=str))
  print(table)


if __name__ == '__main__':
  main()
