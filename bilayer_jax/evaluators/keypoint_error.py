"""Keypoint error (NME): how well the generated head matches the driving pose (the original's
'pose_matching', docs/model.md#external-networks).

For each (generated, reference) pair, 68 landmarks are detected on BOTH images with the same landmark
backend (bilayer_jax.face.landmarks: face_alignment as the original, or dlib offline), and

    NME = mean_i ||p_i(generated) - p_i(reference)||  /  ||mean(p_42..47(reference)) - mean(p_36..41(reference))||

i.e. the mean point-to-point error normalised by the reference's inter-ocular distance (eye centres). Lower is
better. Detecting on the reference too (rather than using the dataset's keypoints) cancels the detector's own
bias, as in the original. Frames where the reference has no detected face are left out; frames where only the
generated image has none are counted as failures (`fail_rate`) and left out of the mean, because a pose error
cannot be measured for them (the original would crash there).

Images smaller than `min_side` are upsampled (bicubic) before detection: HOG face detection misses faces
under ~80 px. NME is scale-invariant, so this does not change the metric's meaning.
"""

from typing import Optional, Tuple, Union

import numpy as np

from bilayer_jax.evaluators import identity
from bilayer_jax.face import images as images_lib
from bilayer_jax.face import landmarks as landmarks_lib

RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)


def nme(pred_landmarks: np.ndarray, ref_landmarks: np.ndarray) -> float:
  """Normalised mean error of two (68, 2) landmark sets (see module docstring)."""
  pred, ref = np.asarray(pred_landmarks, np.float64), np.asarray(ref_landmarks, np.float64)
  inter_ocular = np.linalg.norm(ref[LEFT_EYE].mean(0) - ref[RIGHT_EYE].mean(0))
  return float(np.linalg.norm(pred - ref, axis=-1).mean() / max(inter_ocular, 1e-6))


class KeypointError:
  """NME between generated and reference frames with one landmark backend.

  Args:
    backend: a bilayer_jax.face.landmarks backend name ('dlib', 'face_alignment', 'auto') or instance.
    min_side: frames are upsampled to at least this side before detection.
  """

  def __init__(self, backend: Union[str, landmarks_lib.LandmarkBackend] = 'dlib', min_side: int = 256):
    self.backend = landmarks_lib.get_landmark_backend(backend) if isinstance(backend, str) else backend
    self.name = self.backend.name
    self.min_side = min_side

  def detect(self, image: np.ndarray) -> Optional[np.ndarray]:
    """(68, 2) landmarks in the pixel coordinates of `image` (uint8 RGB), or None."""
    size = image.shape[0]
    scale = max(1.0, self.min_side / size)
    if scale > 1:
      image = images_lib.resize_bicubic(image, int(round(size * scale)))
    found = self.backend.detect(image)
    return None if found is None else np.asarray(found, np.float32)[:, :2] / scale

  def __call__(self, generated: np.ndarray, reference: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) images in [-1, 1] twice -> (nme (N,) with NaN where not measurable, status (N,)).

    status: 0 measured, 1 no face on the generated image (a failure), 2 no face on the reference (skipped).
    """
    values = np.full(len(generated), np.nan, np.float64)
    status = np.zeros(len(generated), np.int32)
    for i, (gen, ref) in enumerate(zip(identity.to_uint8(generated), identity.to_uint8(reference))):
      ref_lms = self.detect(ref)
      if ref_lms is None:
        status[i] = 2
        continue
      gen_lms = self.detect(gen)
      if gen_lms is None:
        status[i] = 1
        continue
      values[i] = nme(gen_lms, ref_lms)
    return values, status
