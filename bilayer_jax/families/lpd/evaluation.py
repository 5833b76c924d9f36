"""The LPD family's periodic held-out evaluation and image grids for the training loop.

Feed-forward K-shot self-reenactment on held-out batches with the EMA networks in eval mode (what the
official code renders with): the identity encoder averages the K source frames of a video, the pose
encoder reads a separate target frame of the same video (no landmarks), and the generator's masked RGB is
compared with the target masked by its segmentation (LPD renders the person on black, as it is trained) with
the evaluation suite's image metrics (`config.eval.periodic_metrics`), on [-1, 1] images as for every family.
"""

from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.evaluators import metrics as metrics_lib
from bilayer_jax.evaluators import report
from bilayer_jax.families.lpd import objective
from bilayer_jax.models.lpd import networks

GRID_COLUMNS = ('source', 'target', 'prediction', 'mask')


def _network(gen_vars: Mapping[str, Any], net: str) -> Dict[str, Any]:
  return {c: tree[net] for c, tree in gen_vars.items() if net in tree}


def render(cfg: objective.StepConfig, gen_vars: Mapping[str, Any], batch: Mapping[str, Any]):
  """Eval-mode prediction of each target frame from the K source frames: ((N, T, H, W, 3) masked RGB in
  [-1, 1], (N, T, H, W, 1) mask)."""
  m = cfg.model
  embedder = networks.Embedder(m)
  unit = lambda x: (x + 1) / 2
  _, identity = embedder.apply(_network(gen_vars, 'embedder'), unit(batch['source_imgs']), method=embedder.identity)
  n, t = batch['target_imgs'].shape[:2]
  targets = unit(batch['target_imgs']).reshape((n * t,) + batch['target_imgs'].shape[2:])
  pose = embedder.apply(_network(gen_vars, 'embedder'), targets, method=embedder.pose)
  fake, mask = networks.Generator(m).apply(_network(gen_vars, 'generator'), jnp.repeat(identity, t, axis=0), pose)
  shape = batch['target_imgs'].shape
  return (fake * 2 - 1).reshape(shape), mask.reshape(shape[:-1] + (1,))


def masked_target(batch: Mapping[str, Any]) -> jax.Array:
  """The target frames as LPD learns them: the person (segmentation mask) on black, in [-1, 1]."""
  return ((batch['target_imgs'] + 1) / 2 * batch['target_segs']) * 2 - 1


def make_eval_fn(cfg: objective.StepConfig, num_images: int, metric_names=('l1', 'psnr', 'ssim'), lpips=None,
                 out_sharding=None):
  """jit: (generator-side variables, batch, LPIPS variables or None) -> (per-image metrics, the first
  `num_images` rows of the grid images)."""
  image_fn = metrics_lib.image_metrics_fn(metric_names, lpips)
  frames = lambda x: x.reshape((-1,) + x.shape[2:])

  def fn(gen_vars, batch, lpips_vars):
    pred, mask = render(cfg, gen_vars, batch)
    target = masked_target(batch)
    metrics = image_fn(lpips_vars, frames(pred), frames(target))
    columns = {'source': batch['source_imgs'][:, 0], 'target': target[:, 0], 'prediction': pred[:, 0],
               'mask': jnp.repeat(mask[:, 0] * 2 - 1, 3, axis=-1)}
    return metrics, jax.tree_util.tree_map(lambda x: x[:num_images], columns)

  return jax.jit(fn, out_shardings=out_sharding)


def image_grid(columns: Mapping[str, Any], max_rows: int) -> np.ndarray:
  """Rows = videos, columns = GRID_COLUMNS (those present); uint8 (H, W, 3)."""
  return report.image_grid(columns, GRID_COLUMNS, max_rows)
