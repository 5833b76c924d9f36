"""The metric suite: names, the images each metric sees, and batched per-frame computation.

Metrics (lower/higher is better):
  l1 (↓), psnr (↑, dB), ssim (↑)      image_metrics: images in [0, 1] (data range 1), per frame
  lpips (↓)                           evaluators.lpips: VGG LPIPS on images in [-1, 1]
  csim_dlib, csim_arcface (↑)         evaluators.identity: cosine similarity of face embeddings
  nme_dlib, nme_face_alignment (↓)    evaluators.keypoint_error: landmark error / inter-ocular distance
  fid (↓)                             evaluators.fid: over the whole set of generated vs real frames

Which images: the model renders only the person (its background is not modelled), so by default predictions
and ground truth are both composited with the GROUND-TRUTH mask onto the -1 (black) background before any
metric (`mask='ground_truth'`); `'predicted'` uses the predicted mask for both (the original's training-time
test metrics), `'none'` compares raw frames. The same functions serve the trainer's periodic evaluation
(inside its jit-compiled eval step) and the evaluation protocol.
"""

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import errors
from bilayer_jax.evaluators import fid as fid_lib
from bilayer_jax.evaluators import identity
from bilayer_jax.evaluators import image_metrics
from bilayer_jax.evaluators import keypoint_error
from bilayer_jax.evaluators import lpips as lpips_lib

DEVICE_METRICS = ('l1', 'psnr', 'ssim', 'lpips')
IDENTITY_NETWORKS = ('dlib', 'arcface')
LANDMARK_BACKENDS = ('dlib', 'face_alignment')
SET_METRICS = ('fid',)  # one value per evaluation, not per frame
ALL_METRICS = DEVICE_METRICS + tuple(f'csim_{n}' for n in IDENTITY_NETWORKS) + tuple(
    f'nme_{b}' for b in LANDMARK_BACKENDS) + SET_METRICS
HIGHER_IS_BETTER = {'psnr', 'ssim', 'csim_dlib', 'csim_arcface'}
MASK_MODES = ('ground_truth', 'predicted', 'none')


def parse_metrics(names: Union[str, Sequence[str]]) -> Tuple[str, ...]:
  """'l1,psnr,...' or ('l1', 'psnr', ...) -> validated tuple (unknown names fail, listing the known ones)."""
  parts = names.split(',') if isinstance(names, str) else names
  parsed = tuple(n.strip() for n in parts if n.strip())
  unknown = [n for n in parsed if n not in ALL_METRICS]
  if unknown:
    raise errors.InvalidArgumentError(f'unknown metrics {unknown}; known: {", ".join(ALL_METRICS)}')
  return parsed


def select_masks(mode: str, true_masks, pred_masks):
  if mode not in MASK_MODES:
    raise errors.InvalidArgumentError(f'mask mode {mode!r}: expected one of {MASK_MODES}')
  return {'ground_truth': true_masks, 'predicted': pred_masks, 'none': None}[mode]


def image_metrics_fn(names: Sequence[str], lpips: Optional[lpips_lib.LPIPS] = None):
  """A pure (jit-able) fn(lpips variables, pred, target) -> {name: (N,)} for the device metrics in `names`.

  pred/target: (N, H, W, 3) in [-1, 1], already masked as wanted.
  """
  names = tuple(n for n in names if n in DEVICE_METRICS)
  if 'lpips' in names and lpips is None:
    raise ValueError('lpips requested without an LPIPS model')

  def fn(lpips_variables, pred, target):
    a, b = image_metrics.to_unit_range(pred), image_metrics.to_unit_range(target)
    out = {}
    for name in names:
      if name == 'lpips':
        out[name] = lpips.apply(lpips_variables, jnp.clip(pred, -1, 1), target)
      else:
        out[name] = getattr(image_metrics, name)(a, b)
    return out

  return fn


class FrameEvaluator:
  """Computes configured metrics for batches of frames (host-side orchestration, jit inside).

  Args:
    names: metric names (ALL_METRICS).
    arcface_weights: the IR-SE-50 .pth for csim_arcface.
    landmark_min_side: frames are upsampled to this side for landmark detection (NME).
  """

  def __init__(self, names: Sequence[str], arcface_weights: str = '', landmark_min_side: int = 256):
    self.names = tuple(names)
    self.lpips = lpips_lib.LPIPS() if 'lpips' in self.names else None
    self._lpips_vars = self.lpips.variables if self.lpips else None
    self._image_fn = jax.jit(image_metrics_fn(self.names, self.lpips))
    self.embedders = {n: identity.make_embedder(n, arcface_weights)
                      for n in IDENTITY_NETWORKS if f'csim_{n}' in self.names}
    self.keypoint_errors = {b: keypoint_error.KeypointError(b, landmark_min_side)
                            for b in LANDMARK_BACKENDS if f'nme_{b}' in self.names}
    self.inception = fid_lib.InceptionFeatures() if 'fid' in self.names else None

  @property
  def cross_keys(self) -> Tuple[str, ...]:
    """Per-frame columns of `cross_reenactment` (empty: no identity or keypoint metric)."""
    keys = tuple(f'csim_{n}' for n in self.embedders)
    for backend in self.keypoint_errors:
      keys += (f'nme_{backend}', f'nme_{backend}_failed', f'nme_{backend}_measurable')
    return keys

  @property
  def self_keys(self) -> Tuple[str, ...]:
    """Per-frame columns of `self_reenactment`."""
    return tuple(n for n in self.names if n in DEVICE_METRICS) + self.cross_keys

  def _face_metrics(self, generated, gen_keypoints, identity_ref, identity_ref_keypoints, pose_ref):
    out = {}
    for net, embed in self.embedders.items():
      out[f'csim_{net}'] = identity.cosine_similarity(embed(generated, gen_keypoints),
                                                      embed(identity_ref, identity_ref_keypoints))
    for backend, kpe in self.keypoint_errors.items():
      values, status = kpe(generated, pose_ref)
      out[f'nme_{backend}'] = values
      out[f'nme_{backend}_failed'] = (status == 1).astype(np.float64)
      out[f'nme_{backend}_measurable'] = (status != 2).astype(np.float64)
    return out

  def self_reenactment(self, pred: np.ndarray, target: np.ndarray, target_keypoints: np.ndarray
                       ) -> Dict[str, np.ndarray]:
    """Masked predictions vs masked targets, (N, S, S, 3) in [-1, 1]; keypoints (N, 68, 2) in pixels.

    CSIM aligns both images with the target's keypoints (as the original); NME compares landmarks detected
    on the prediction with those detected on the target.
    """
    out = {k: np.asarray(v, np.float64) for k, v in
           self._image_fn(self._lpips_vars, jnp.asarray(pred), jnp.asarray(target)).items()}
    out.update(self._face_metrics(pred, target_keypoints, target, target_keypoints, target))
    return out

  def cross_reenactment(self, pred: np.ndarray, driver_keypoints: np.ndarray, source: np.ndarray,
                        source_keypoints: np.ndarray, driver: np.ndarray) -> Dict[str, np.ndarray]:
    """No ground truth: CSIM of the prediction to the source (each aligned by its own keypoints), NME of the
    prediction to the driving frame. `source`/`source_keypoints` are repeated to the batch."""
    n = len(pred)
    return self._face_metrics(pred, driver_keypoints, np.repeat(source[None], n, 0),
                              np.repeat(source_keypoints[None], n, 0), driver)


def summarise(per_frame: Mapping[str, Sequence[np.ndarray]]) -> Dict[str, Any]:
  """Concatenated per-frame values -> {metric: mean over frames} plus NME failure rates and counts.

  NaN entries (NME not measurable) are left out of the means; `nme_<b>_fail_rate` = failures / measurable.
  """
  cat = {k: np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in v]) for k, v in per_frame.items()}
  summary: Dict[str, Any] = {}
  for key, values in cat.items():
    if key.endswith(('_failed', '_measurable')):
      continue
    finite = values[np.isfinite(values)]
    summary[key] = float(finite.mean()) if finite.size else float('nan')
    if key.startswith('nme_'):
      measurable = cat[f'{key}_measurable'].sum()
      summary[f'{key}_fail_rate'] = float(cat[f'{key}_failed'].sum() / measurable) if measurable else float('nan')
      summary[f'{key}_frames'] = int(finite.size)
  first = next(iter(cat.values()), np.zeros(0))
  summary['frames'] = int(first.size)
  return summary
