"""Standing BN statistics, held-out evaluation and image grids for the training loop.

Standing statistics as the original intends (docs/model.md#standing-statistics; the released version is a
no-op, docs/original_bugs.md#standing-statistics-are-a-no-op): the BatchNorm statistics of the given
networks are replaced by their average over N training batches, computed with those BN layers in train mode
and everything else in eval mode (no spectral-norm power iteration).

Evaluation: eval-mode one-shot self-reenactment on held-out batches (source frame -> other frames of the
same video, driven by their own keypoints). Predictions (without the predicted-mask compositing, as at
inference) and targets are both composited with the ground-truth mask onto the -1 background and compared
with the evaluation suite's image metrics (`config.eval.periodic_metrics`: L1, PSNR, SSIM, LPIPS), the same
functions and image rule as `run.py --mode=eval` (bilayer_jax.evaluators.metrics, mask 'ground_truth').
"""

from typing import Any, Dict, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.evaluators import metrics as metrics_lib
from bilayer_jax.evaluators import report
from bilayer_jax.families.bilayer import objective
from bilayer_jax.models.bilayer import apply_mask


def make_stats_fn(cfg: objective.StepConfig, networks):
  """jit: (generator variables, batch) -> the BN statistics of one standing-statistics batch."""
  gen, _ = objective.make_models(cfg)
  networks = tuple(networks)

  def fn(gen_vars, batch):
    _, state = gen.apply(gen_vars, batch, train=networks, inf_apply_masks=cfg.inf_apply_masks,
                         mutable=['batch_stats'])
    return state['batch_stats']

  return jax.jit(fn)


def standing_statistics(stats_fn, state: Dict[str, Any], batches: Iterable[Mapping[str, Any]],
                        networks) -> Dict[str, Any]:
  """Returns `state` with the networks' BN running mean/var averaged over `batches`."""
  gen_vars = objective.model_variables(state)['generator']
  total, count, last = None, 0, None
  for batch in batches:
    stats = stats_fn(gen_vars, batch)
    stats = {n: stats[n] for n in networks if n in stats}
    total = stats if total is None else jax.tree_util.tree_map(jnp.add, total, stats)
    count, last = count + 1, stats
  if not count:
    return state

  def average(path, summed, final):
    # Means and variances are averaged; num_batches_tracked counts every forward, as in the original.
    return final if path[-1].key == 'num_batches_tracked' else summed / count

  averaged = jax.tree_util.tree_map_with_path(average, total, last)
  batch_stats = dict(state['model_state']['generator']['batch_stats'])
  batch_stats.update(averaged)
  model_state = {**state['model_state'],
                 'generator': {**state['model_state']['generator'], 'batch_stats': batch_stats}}
  return {**state, 'model_state': model_state}


def make_eval_fn(cfg: objective.StepConfig, num_images: int, metric_names=('l1', 'psnr', 'ssim'), lpips=None,
                 out_sharding=None):
  """jit: (generator variables, batch, LPIPS variables or None) -> (per-image metrics, the first `num_images`
  rows of the grid images).

  `metric_names`: image metrics of bilayer_jax.evaluators.metrics ('lpips' needs `lpips`, an
  evaluators.lpips.LPIPS whose variables are passed at call time). `out_sharding` (e.g. replicated over the
  mesh) makes the outputs readable on every process.
  """
  gen, _ = objective.make_models(cfg)
  image_fn = metrics_lib.image_metrics_fn(metric_names, lpips)

  def fn(gen_vars, batch, lpips_vars):
    out = gen.apply(gen_vars, batch, train=(), inf_apply_masks=False, enh_apply_masks=False,
                    pred_source_data=cfg.enhancer, enhance=cfg.enhancer)
    pred = out[cfg.fake_key]
    segs = batch['target_segs']
    metrics = image_fn(lpips_vars, _frames(apply_mask(pred, segs)), _frames(apply_mask(batch['target_imgs'], segs)))
    columns = jax.tree_util.tree_map(lambda x: x[:num_images], sample_images(batch, out, cfg.fake_key))
    return metrics, columns

  return jax.jit(fn, out_shardings=out_sharding)


def _frames(x):
  return x.reshape((-1,) + x.shape[2:])


def sample_images(batch: Mapping[str, Any], out: Mapping[str, Any], fake_key: str) -> Dict[str, Any]:
  """First frame of every identity: the columns of the image grid (all in [-1, 1], 3 channels)."""
  first = lambda x: x[:, 0]
  seg = first(out['pred_target_segs']) * 2 - 1 if 'pred_target_segs' in out else None
  columns = {'source': first(batch['source_imgs']), 'target': first(batch['target_imgs']),
             'prediction': first(out[fake_key]), 'lf': first(out['pred_target_delta_lf_rgbs']),
             'warped_texture': first(out['pred_target_delta_hf_rgbs']), 'texture': first(out['pred_tex_hf_rgbs'])}
  if 'pred_enh_tex_hf_rgbs' in out:
    columns['enhanced_texture'] = first(out['pred_enh_tex_hf_rgbs'])
  if seg is not None:
    columns['segmentation'] = jnp.repeat(seg, 3, axis=-1)
  return columns


GRID_COLUMNS = ('source', 'target', 'prediction', 'lf', 'warped_texture', 'texture', 'enhanced_texture',
                'segmentation')


def image_grid(columns: Mapping[str, Any], max_rows: int) -> np.ndarray:
  """Rows = identities, columns = GRID_COLUMNS (those present); uint8 (H, W, 3)."""
  return report.image_grid(columns, GRID_COLUMNS, max_rows)
