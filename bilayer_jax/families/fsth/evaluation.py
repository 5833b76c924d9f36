"""The FSTH family's periodic held-out evaluation and image grids for the training loop.

Feed-forward K-shot self-reenactment on held-out batches: the embedder (eval mode) embeds the K source
frames of a video with their landmark images, their mean drives the generator on the landmark image of a
separate target frame of the same video, and the whole frame is compared with the target (FSTH renders the
background too, so no mask) with the evaluation suite's image metrics (`config.eval.periodic_metrics`),
on [-1, 1] images as for every family.
"""

from typing import Any, Mapping

import jax
import numpy as np

from bilayer_jax.evaluators import metrics as metrics_lib
from bilayer_jax.evaluators import report
from bilayer_jax.families.fsth import objective
from bilayer_jax.models.fsth import networks

GRID_COLUMNS = ('source', 'source_landmarks', 'target_landmarks', 'target', 'prediction')


def render(cfg: objective.MetaStepConfig, gen_vars: Mapping[str, Any], batch: Mapping[str, Any]):
  """Eval-mode prediction of each target frame from the K source frames; (N, T, H, W, 3) in [-1, 1]."""
  m = cfg.model
  params, spectral = gen_vars['params'], gen_vars['spectral']
  variables = lambda net: {'params': params[net], 'spectral': spectral[net]}
  n, k = batch['source_imgs'].shape[:2]
  flat = lambda x: (x.reshape((-1,) + x.shape[2:]) + 1) / 2
  embeddings = networks.Embedder(m).apply(variables('embedder'), flat(batch['source_imgs']),
                                          flat(batch['source_stickmen']))
  e_hat = embeddings.reshape(n, k, -1).mean(axis=1)
  t = batch['target_stickmen'].shape[1]
  fake = networks.Generator(m).apply(variables('generator'), flat(batch['target_stickmen']),
                                     jax.numpy.repeat(e_hat, t, axis=0))
  return (fake * 2 - 1).reshape(batch['target_imgs'].shape)


def make_eval_fn(cfg: objective.MetaStepConfig, num_images: int, metric_names=('l1', 'psnr', 'ssim'), lpips=None,
                 out_sharding=None):
  """jit: (generator-side variables, batch, LPIPS variables or None) -> (per-image metrics, the first
  `num_images` rows of the grid images)."""
  image_fn = metrics_lib.image_metrics_fn(metric_names, lpips)
  frames = lambda x: x.reshape((-1,) + x.shape[2:])

  def fn(gen_vars, batch, lpips_vars):
    pred = render(cfg, gen_vars, batch)
    metrics = image_fn(lpips_vars, frames(pred), frames(batch['target_imgs']))
    columns = {'source': batch['source_imgs'][:, 0], 'source_landmarks': batch['source_stickmen'][:, 0],
               'target_landmarks': batch['target_stickmen'][:, 0], 'target': batch['target_imgs'][:, 0],
               'prediction': pred[:, 0]}
    return metrics, jax.tree_util.tree_map(lambda x: x[:num_images], columns)

  return jax.jit(fn, out_shardings=out_sharding)


def image_grid(columns: Mapping[str, Any], max_rows: int) -> np.ndarray:
  """Rows = videos, columns = GRID_COLUMNS (those present); uint8 (H, W, 3)."""
  return report.image_grid(columns, GRID_COLUMNS, max_rows)
