"""Identity similarity (CSIM): cosine similarity of face-recognition embeddings of two aligned faces.

Two embedding networks, whose numbers are NOT interchangeable (metric names say which one produced them):

* `csim_arcface`: the paper's ArcFace IR-SE-50 (InsightFace), loaded from a user-supplied weight file
  (`evaluators.arcface`); faces are similarity-aligned to the 112x112 ArcFace template from 5 points.
* `csim_dlib`: dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`, 128-d, trained
  for face verification, 99.38% on LFW) that ships in the `face-recognition-models` package: works offline.
  dlib aligns each face itself from the given 68 landmarks (its 150x150 face chip, padding 0.25).

As the original's CSIM, both images of a pair are aligned with the SAME ground-truth keypoints (those of the
target frame) in self-reenactment, so the score measures identity, not alignment. Inputs are RGB in [-1, 1].
"""

import os
from typing import Optional

import numpy as np

from bilayer_jax.face import landmarks as landmarks_lib

from bilayer_jax import errors

DLIB_MODEL = 'dlib_face_recognition_resnet_model_v1.dat'


class IdentityModelError(errors.UserError, FileNotFoundError):
  """An identity network's model file is missing."""


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity of (N, D) embeddings -> (N,)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] float images -> uint8 (clipped, rounded)."""
  return np.round((np.clip(np.asarray(images, np.float32), -1, 1) + 1) * 127.5).astype(np.uint8)


def dlib_model_path() -> str:
  """Path of dlib's face-recognition ResNet inside the face-recognition-models package."""
  try:
    return landmarks_lib.face_recognition_model_path(DLIB_MODEL)
  except landmarks_lib.BackendUnavailableError as e:
    raise IdentityModelError(f'csim_dlib: {e}') from e


class DlibFaceEmbedder:
  """dlib's 128-d face descriptor of faces located by 68 landmarks.

  Args:
    model_path: the .dat file (default: the one in face-recognition-models).
    padding: dlib's face-chip padding around the landmarks (its default, 0.25).
  """

  name = 'dlib'

  def __init__(self, model_path: Optional[str] = None, padding: float = 0.25):
    import dlib  # pylint: disable=g-import-not-at-top
    self._dlib = dlib
    path = model_path or dlib_model_path()
    if not os.path.isfile(path):
      raise IdentityModelError(f'dlib face-recognition model {path} not found')
    self._model = dlib.face_recognition_model_v1(path)
    self.padding = padding

  def _shape(self, keypoints: np.ndarray):
    """A dlib full_object_detection from (68, 2) pixel keypoints (the box is their bounding box)."""
    pts = [self._dlib.point(int(round(x)), int(round(y))) for x, y in np.asarray(keypoints, np.float64)]
    lo, hi = np.floor(keypoints.min(0)).astype(int), np.ceil(keypoints.max(0)).astype(int)
    rect = self._dlib.rectangle(int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
    return self._dlib.full_object_detection(rect, pts)

  def __call__(self, images: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) in [-1, 1], (N, 68, 2) pixel keypoints -> (N, 128) float32 descriptors."""
    pixels = to_uint8(images)
    out = [np.asarray(self._model.compute_face_descriptor(np.ascontiguousarray(img), self._shape(kp), 0,
                                                          self.padding), np.float32)
           for img, kp in zip(pixels, np.asarray(keypoints, np.float32))]
    return np.stack(out) if out else np.zeros((0, 128), np.float32)


def make_embedder(name: str, arcface_weights: str = ''):
  """'dlib' or 'arcface' (needs `arcface_weights`, the IR-SE-50 .pth) -> an embedder."""
  if name == 'dlib':
    return DlibFaceEmbedder()
  if name == 'arcface':
    if not arcface_weights:
      raise IdentityModelError('csim_arcface needs the ArcFace IR-SE-50 weights (InsightFace_Pytorch '
                               'model_ir_se50.pth, the original\'s pretrained_weights/csim/insight_face.pth): '
                               'set --config.eval.arcface_weights=PATH')
    from bilayer_jax.evaluators import arcface  # pylint: disable=g-import-not-at-top
    return arcface.ArcFaceEmbedder(arcface_weights)
  raise errors.InvalidArgumentError(f'unknown identity network {name!r}: expected dlib or arcface')
