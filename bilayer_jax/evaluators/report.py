"""Evaluation results as JSON-ready data and as a markdown report."""

import math
import re
from typing import Any, Dict, List, Mapping, Sequence

import jax
import numpy as np

from bilayer_jax.evaluators import metrics as metrics_lib

_DESCRIPTIONS = {
    'l1': 'mean |prediction − target| in [0, 1]',
    'psnr': 'PSNR in dB (data range 1)',
    'ssim': 'SSIM, 11×11 Gaussian window σ 1.5',
    'lpips': 'LPIPS (VGG, v0.1 lin weights)',
    'csim_dlib': 'identity cosine similarity, dlib face-recognition ResNet',
    'csim_arcface': 'identity cosine similarity, ArcFace IR-SE-50 (the paper\'s CSIM)',
    'nme_dlib': 'landmark error / inter-ocular distance, dlib 68 points',
    'nme_face_alignment': 'landmark error / inter-ocular distance, face-alignment FAN',
    'fid': 'FID, generated vs real frames (standard Inception pool3; biased below thousands of frames)',
}


def image_grid(columns: Mapping[str, Any], order: Sequence[str], max_rows: int) -> np.ndarray:
  """Image columns (each (N, H, W, 3) in [-1, 1]) side by side in `order` (those present), the first
  `max_rows` rows; uint8 (H, W, 3) for TensorBoard."""
  arrays = [np.asarray(jax.device_get(columns[k]), np.float32)[:max_rows] for k in order if k in columns]
  grid = np.concatenate([np.concatenate(list(a), axis=0) for a in arrays], axis=1)
  return np.round((np.clip(grid, -1, 1) + 1) * 127.5).astype(np.uint8)


def folder_name(description: str) -> str:
  """A file-system-safe folder name for what was evaluated."""
  name = re.sub(r'[^A-Za-z0-9._-]+', '_', description).strip('_')
  return name[-80:] or 'model'


def jsonable(value: Any) -> Any:
  """Numpy scalars/arrays -> Python numbers/lists (NaN stays NaN: json writes it as NaN)."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if hasattr(value, 'tolist'):
    return value.tolist()
  return value


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return 'n/a' if math.isnan(value) else f'{value:.4f}'
  return str(value)


def _metric_keys(summary: Dict[str, Any]) -> List[str]:
  return [k for k in metrics_lib.ALL_METRICS if k in summary]


def _arrow(name: str) -> str:
  return '↑' if name in metrics_lib.HIGHER_IS_BETTER else '↓'


def _pose_identity_lines(section: Any) -> List[str]:
  """The LPD paper's pose/identity errors (evaluators.pose_identity), or why they were skipped."""
  if not section:
    return []
  lines = ['', '## Pose / identity errors (the LPD paper\'s disentanglement metric)', '']
  if 'skipped' in section:
    return lines + [f'Skipped: {section["skipped"]}.']
  keys = [k for k in section if k.startswith(('identity_error_', 'pose_error_')) and not k.endswith(
      ('_frames', '_fail_rate', '_skipped', '_fallback_rate'))]
  lines += ['Identity error (1 − cosine to the person\'s mean descriptor, cross-identity frames) and pose error '
            '(landmark distance / outer-eye distance to the driving frame, self-reenactment frames; `_fit` after '
            'a least-squares scale and shift), lower is better; not the paper\'s networks, so not its numbers.',
            '', '| people | ' + ' | '.join(f'{k} ↓' for k in keys) + ' |', '|---|' + '---|' * len(keys),
            f'| {section.get("people", "")} | ' + ' | '.join(_fmt(section[k]) for k in keys) + ' |']
  if 'identity_error_skipped' in section:
    lines += ['', f'Identity error skipped: {section["identity_error_skipped"]}.']
  return lines


def markdown(results: Dict[str, Any]) -> str:
  """The report: protocol, the summary table with baselines, cross-identity, per-video rows."""
  proto = results['protocol']
  lines = [f'# Evaluation: {results.get("model", {}).get("evaluated", "")}', '',
           f'Dataset `{proto["dataset"]}`, split `{proto["split"]}`: {proto["num_videos"]} videos at '
           f'{proto["image_size"]}², source frame {proto["source_frame"]}, up to {proto["max_targets"] or "all"} '
           f'targets per video, mask `{proto["mask"]}`, enhancer '
           f'{"on" if results.get("model", {}).get("enhanced") else "off"}.', '',
           '## One-shot self-reenactment', '']
  own = results['self_reenactment']['summary']
  keys = _metric_keys(own)
  lines += ['| | frames | ' + ' | '.join(f'{k} {_arrow(k)}' for k in keys) + ' |',
            '|---|---|' + '---|' * len(keys),
            f'| model | {own.get("frames", 0)} | ' + ' | '.join(_fmt(own.get(k)) for k in keys) + ' |']
  for name, base in results.get('baselines', {}).items():
    lines.append(f'| baseline: {name} | {base.get("frames", 0)} | ' +
                 ' | '.join(_fmt(base[k]) if k in base else '–' for k in keys) + ' |')
  for key in keys:
    if key == 'fid':
      lines += ['', f'fid over {own.get("fid_frames", 0)} generated and as many real frames.']
    if key.startswith('nme_'):
      lines += ['', f'{key}: no face found on {_fmt(own.get(key + "_fail_rate"))} of the generated frames '
                    f'(measured on {own.get(key + "_frames", 0)} frames).']
  lines += ['', '## Cross-identity reenactment (no ground truth)', '']
  cross = results.get('cross_reenactment', {})
  if 'skipped' in cross:
    lines.append(f'Skipped: {cross["skipped"]}.')
  else:
    ckeys = _metric_keys(cross['summary'])
    lines += ['CSIM to the source photo, NME to the driving frame.', '',
              '| frames | ' + ' | '.join(f'{k} {_arrow(k)}' for k in ckeys) + ' |', '|---|' + '---|' * len(ckeys),
              f'| {cross["summary"].get("frames", 0)} | ' + ' | '.join(_fmt(cross['summary'][k]) for k in ckeys)
              + ' |']
  lines += _pose_identity_lines(results.get('pose_identity'))
  vkeys = [k for k in keys if k not in metrics_lib.SET_METRICS]
  lines += ['', '## Per video (self-reenactment)', '', '| person | video | frames | ' + ' | '.join(vkeys) + ' |',
            '|---|---|---|' + '---|' * len(vkeys)]
  for v in results['self_reenactment']['videos']:
    lines.append(f'| {v["person_id"]} | {v["video_id"]} | {v["frames"]} | ' +
                 ' | '.join(_fmt(v.get(k)) for k in vkeys) + ' |')
  lines += ['', '## Metrics', ''] + [f'- `{k}`: {_DESCRIPTIONS[k]}' for k in keys]
  return '\n'.join(lines) + '\n'
