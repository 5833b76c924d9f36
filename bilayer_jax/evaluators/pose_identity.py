"""Pose and identity errors of "Neural Head Reenactment with Latent Pose Descriptors" (Burkov et al., CVPR
2020), computed as the paper's script (`compute_pose_identity_error.py`) computes them, with our networks.

Protocol: a set of test identities, each with its own images (used only for its reference descriptor), and
reenactments keyed (identity, driver): identity i's model driven by the frames of driver j, a person of the
same set. Cross pairs (j != i) measure identity preservation, self pairs (j == i) pose transfer.

Identity error (lower is better): identity i's reference is the MEAN of the unit descriptors of its own images,
deliberately not renormalised (as the official), so a person whose images disagree has a shorter reference;
every frame of every cross pair (i, j != i) gets its unit descriptor d, and

    identity_error = 1 - mean over all cross-pair frames of <d, reference_i>.

Self pairs never enter it. With `identity_masks` the identity images are first composited onto black, as the
official does for models that render a black background.

Pose error (lower is better): 68 landmarks on every frame of every self pair (i, i) and on the driving frame
it reproduces;

    pose_error = mean over frames of  mean_k ||p_k(output) - p_k(driver)|| / ||p_36(driver) - p_45(driver)||

(outer eye corners; the official's floor of 0.01 px only guards a division by zero). `pose_error_fit` first
maps each output's landmarks by the least-squares scale and shift onto the driver's, so head position and
size no longer count: what remains is expression and head rotation. Cross pairs never enter it.

Networks (the official uses insightface's MXNet ArcFace r100 after MTCNN, and face_alignment's FAN): here the
descriptor is a house identity embedder (evaluators.identity: `arcface` IR-SE-50 or offline `dlib`), aligned
by landmarks from a house landmark backend (face.landmarks: `face_alignment` or offline `dlib`), and metric
names carry the network: identity_error_<embedder>, pose_error_<backend>, pose_error_fit_<backend>. They are
not the paper's numbers.

Where we differ from the official, and why:
* No face on an image whose descriptor is needed: the official embeds a fixed box (per crop style; (42, 53,
  64, 53) px trimmed off a 256 px latent-pose crop), resized to 112 px without alignment. We align the
  embedder on a mean face instead: the mean of the landmarks (relative to the image side) detected on the
  other images of the same set (one identity's images; all cross-pair outputs). It is the same idea, where
  faces sit in these crops, but needs no table per crop style or image size and suits every embedder.
  Reported as `identity_error_<e>_fallback_rate` (outputs) and `identity_reference_fallback_rate`.
* No face for the pose error: the official substitutes a fixed mean face, which scores 0 when both images
  fail and an arbitrary penalty when one does, and reports neither. As evaluators.keypoint_error, a driving
  frame without a face is skipped (not measurable) and an output without a face is a failure, left out of the
  means and reported as `pose_error_<b>_fail_rate` = failures / measurable frames.
* Descriptors are L2-normalised per image (insightface normalises ArcFace's; dlib's have norms ~1.4).
* Means pool frames: with the official's equal counts (30 identities x 30 drivers x 32 frames) this is its
  number; with unequal counts every frame weighs the same. Any numbers of identities, drivers and frames
  are accepted (`num_frames` keeps each reenactment's first frames, the official's 32).
Images are (N, S, S, 3) RGB, uint8 or float in [-1, 1] (the house convention).
"""

from typing import Any, Dict, Hashable, Mapping, Optional, Tuple

import numpy as np

from bilayer_jax import errors
from bilayer_jax.evaluators import identity
from bilayer_jax.evaluators import keypoint_error

OUTER_EYE_CORNERS = (36, 45)
MIN_INTEROCULAR = 1e-2  # px, the official's floor
NUM_LANDMARKS = 68


class NoFaceError(errors.UserError, ValueError):
  """No face was found on any image of a set, so there is no face to align the embedder on."""


def as_float(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [-1, 1]; float images pass through as float32."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1
  return images.astype(np.float32)


def normalised_error(pred: np.ndarray, ref: np.ndarray) -> float:
  """Mean point distance of two (68, 2) landmark sets over the reference's outer-eye-corner distance."""
  pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
  left, right = OUTER_EYE_CORNERS
  inter_ocular = max(float(np.linalg.norm(ref[left] - ref[right])), MIN_INTEROCULAR)
  return float(np.linalg.norm(pred - ref, axis=-1).mean() / inter_ocular)


def fit_scale_shift(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """`s * pred + t` for the scale s and shift t that minimise ||s * pred + t - ref||^2 (closed form)."""
  pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
  pred_c, ref_mean = pred - pred.mean(0), ref.mean(0)
  scale = (pred_c * (ref - ref_mean)).sum() / max(float((pred_c**2).sum()), 1e-12)
  return scale * pred_c + ref_mean


def _sides(images: np.ndarray) -> np.ndarray:
  """(x, y) extents of (N, H, W, 3) images, for landmarks relative to the image size."""
  return np.array([images.shape[2], images.shape[1]], np.float64)


class PoseIdentityError:
  """The paper's identity and pose errors with one identity embedder and one landmark backend.

  Args:
    identity_embedder: 'dlib', 'arcface' (needs `arcface_weights`) or an embedder instance
      (evaluators.identity: fn(images in [-1, 1], (N, 68, 2) keypoints) -> (N, D), with a `name`).
    landmark_backend: a face.landmarks backend name ('dlib', 'face_alignment', 'auto') or instance.
    arcface_weights: the IR-SE-50 .pth for 'arcface'.
    min_side: images are upsampled to at least this side for landmark detection (as keypoint_error).
  """

  def __init__(self, identity_embedder: Any = 'dlib', landmark_backend: Any = 'dlib',
               arcface_weights: str = '', min_side: int = 256):
    if isinstance(identity_embedder, str):
      identity_embedder = identity.make_embedder(identity_embedder, arcface_weights)
    self.embedder = identity_embedder
    self._detector = keypoint_error.KeypointError(landmark_backend, min_side)
    self.identity_key = f'identity_error_{self.embedder.name}'
    self.pose_key = f'pose_error_{self._detector.name}'
    self.pose_fit_key = f'pose_error_fit_{self._detector.name}'

  def landmarks(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) images -> (N, 68, 2) pixel landmarks, NaN where no face was found."""
    out = np.full((len(images), NUM_LANDMARKS, 2), np.nan, np.float64)
    for n, pixels in enumerate(identity.to_uint8(as_float(images))):
      found = self._detector.detect(pixels)
      if found is not None:
        out[n] = found
    return out

  def descriptors(self, images: np.ndarray, landmarks: np.ndarray, fallback_face: np.ndarray) -> np.ndarray:
    """Unit (N, D) descriptors; images without landmarks (NaN) are aligned on `fallback_face`, (68, 2)
    landmarks relative to the image size (see `mean_face`)."""
    images = as_float(images)
    keypoints = np.array(landmarks, np.float64)
    missing = np.isnan(keypoints).any(axis=(1, 2))
    keypoints[missing] = np.asarray(fallback_face, np.float64) * _sides(images)
    descs = np.asarray(self.embedder(images, keypoints.astype(np.float32)), np.float64)
    return descs / np.maximum(np.linalg.norm(descs, axis=-1, keepdims=True), 1e-12)

  @staticmethod
  def mean_face(relative_landmarks: np.ndarray, what: str) -> np.ndarray:
    """The mean of the found ones of (N, 68, 2) landmarks relative to the image size (NaN: none found):
    where faces sit in these images."""
    found = relative_landmarks[~np.isnan(relative_landmarks).any(axis=(1, 2))]
    if not len(found):
      raise NoFaceError(f'pose/identity error: no face found on any of the {len(relative_landmarks)} {what}')
    return found.mean(0)

  def identity_reference(self, images: np.ndarray, masks: Optional[np.ndarray] = None,
                         what: str = 'identity images') -> Tuple[np.ndarray, int]:
    """One identity's reference: the mean (not renormalised) of its images' unit descriptors.

    Args:
      images: (N, S, S, 3) images of the identity.
      masks: optional (N, S, S[, 1]) foreground masks in [0, 1]; the images are composited onto black.
      what: names the images in the error raised when none has a face.

    Returns:
      (the (D,) reference, how many images had no face and were aligned on the set's mean face).
    """
    images = as_float(images)
    if masks is not None:
      masks = np.asarray(masks, np.float32).reshape(images.shape[:3] + (1,))
      images = (images + 1) * masks - 1
    lms = self.landmarks(images)
    descs = self.descriptors(images, lms, self.mean_face(lms / _sides(images), what))
    return descs.mean(0), int(np.isnan(lms).any(axis=(1, 2)).sum())

  def identity_error(self, outputs_by_pair: Mapping[Tuple[Hashable, Hashable], np.ndarray],
                     references: Mapping[Hashable, np.ndarray]) -> Dict[str, Any]:
    """1 - mean <descriptor, reference of its identity> over the frames of the CROSS pairs only.

    Args:
      outputs_by_pair: {(identity, driver): (N, S, S, 3) reenacted frames}; self pairs are ignored.
      references: {identity: (D,) reference} (`identity_reference`).
    """
    cross = {pair: as_float(frames) for pair, frames in outputs_by_pair.items() if pair[0] != pair[1]}
    if not cross:
      raise errors.InvalidArgumentError('identity error: no cross pair (an identity driven by another person)')
    missing = sorted({str(i) for i, _ in cross if i not in references})
    if missing:
      raise errors.InvalidArgumentError(f'identity error: no reference for identities {missing}')
    lms = {pair: self.landmarks(frames) for pair, frames in cross.items()}
    # One fallback for all outputs: every crop of a protocol frames faces alike.
    relative = np.concatenate([lms[pair] / _sides(frames) for pair, frames in cross.items()])
    fallback = self.mean_face(relative, 'cross-reenactment frames')
    total = 0.0
    for pair, frames in cross.items():
      total += float((self.descriptors(frames, lms[pair], fallback) @ np.asarray(references[pair[0]])).sum())
    return {self.identity_key: 1.0 - total / len(relative), f'{self.identity_key}_frames': len(relative),
            f'{self.identity_key}_pairs': len(cross),
            f'{self.identity_key}_fallback_rate': float(np.isnan(relative).any(axis=(1, 2)).mean())}

  def _pose_frames(self, outputs: np.ndarray, drivers: np.ndarray) -> Tuple[list, list, int]:
    """Per measured frame: (plain errors, fitted errors, number of driving frames with a face)."""
    if len(outputs) != len(drivers):
      raise errors.InvalidArgumentError(f'pose error: {len(outputs)} output frames but {len(drivers)} driving '
                                        'frames; they pair frame by frame')
    ref_lms, out_lms = self.landmarks(drivers), self.landmarks(outputs)
    measurable = ~np.isnan(ref_lms).any(axis=(1, 2))
    measured = measurable & ~np.isnan(out_lms).any(axis=(1, 2))
    pairs = list(zip(out_lms[measured], ref_lms[measured]))
    return ([normalised_error(o, r) for o, r in pairs], [normalised_error(fit_scale_shift(o, r), r) for o, r in pairs],
            int(measurable.sum()))

  def _pose_summary(self, plain: list, fitted: list, num_measurable: int, num_frames: int) -> Dict[str, Any]:
    mean = lambda values: float(np.mean(values)) if values else float('nan')
    fail_rate = (num_measurable - len(plain)) / num_measurable if num_measurable else float('nan')
    return {self.pose_key: mean(plain), self.pose_fit_key: mean(fitted), f'{self.pose_key}_frames': len(plain),
            f'{self.pose_key}_fail_rate': fail_rate, f'{self.pose_key}_skipped': num_frames - num_measurable}

  def pose_error(self, outputs: np.ndarray, drivers: np.ndarray) -> Dict[str, Any]:
    """Landmark error of self-reenacted frames against the driving frames they reproduce (frame n to n).

    Returns:
      pose_error_<b> and pose_error_fit_<b> (NaN when no frame is measurable), `_frames` (measured),
      `_fail_rate` (no face on the output / measurable) and `_skipped` (no face on the driving frame).
    """
    return self._pose_summary(*self._pose_frames(outputs, drivers), len(drivers))

  def evaluate(self, reenactments: Mapping[Tuple[Hashable, Hashable], np.ndarray],
               identity_images: Mapping[Hashable, np.ndarray], driver_frames: Mapping[Hashable, np.ndarray],
               identity_masks: Optional[Mapping[Hashable, np.ndarray]] = None, num_frames: int = 0
               ) -> Dict[str, Any]:
    """Both errors over a protocol's reenactments.

    Args:
      reenactments: {(identity, driver): (N, S, S, 3) frames}; cross pairs feed the identity error, self
        pairs the pose error.
      identity_images: {identity: its own images} for every identity of a cross pair.
      driver_frames: {identity: its driving frames} for every identity of a self pair; frame n is the one
        the self-reenactment's frame n reproduces.
      identity_masks: optional {identity: masks of its images} (see `identity_reference`).
      num_frames: use only each reenactment's first frames (0: all; the official used 32).
    """
    if not reenactments:
      raise errors.InvalidArgumentError('pose/identity error: no reenactments given')
    clip = lambda frames: frames[:num_frames] if num_frames > 0 else frames
    pairs = {pair: clip(frames) for pair, frames in reenactments.items()}
    cross_ids = sorted({i for i, d in pairs if i != d}, key=str)
    self_ids = sorted({i for i, d in pairs if i == d}, key=str)
    needs = ((cross_ids, identity_images, 'identity images'), (self_ids, driver_frames, 'driving frames'))
    for needed, given, kind in needs:
      absent = [str(i) for i in needed if i not in given]
      if absent:
        raise errors.InvalidArgumentError(f'pose/identity error: no {kind} for identities {absent}')
    out: Dict[str, Any] = {'landmark_backend': self._detector.name, 'identity_embedder': self.embedder.name}
    if cross_ids:
      references, fallbacks = {}, 0
      for i in cross_ids:
        masks = identity_masks.get(i) if identity_masks else None
        references[i], failed = self.identity_reference(identity_images[i], masks, f'images of identity {i}')
        fallbacks += failed
      out.update(self.identity_error(pairs, references))
      out['identity_reference_fallback_rate'] = fallbacks / sum(len(identity_images[i]) for i in cross_ids)
    if self_ids:
      plain, fitted, num_measurable, total = [], [], 0, 0
      for i in self_ids:
        frames = pairs[(i, i)]
        if len(driver_frames[i]) < len(frames):
          raise errors.InvalidArgumentError(f'pose error: identity {i} has {len(frames)} self-reenacted frames '
                                            f'but only {len(driver_frames[i])} driving frames')
        p, f, m = self._pose_frames(frames, driver_frames[i][:len(frames)])
        plain, fitted, num_measurable, total = plain + p, fitted + f, num_measurable + m, total + len(frames)
      out.update(self._pose_summary(plain, fitted, num_measurable, total))
    return out
