"""Face detections: one face's box, score and landmarks, and how detections are merged and ranked.

Shared by every landmark backend (``bilayer_jax/face/landmarks.py``) and by the callers that let a user pick
one face among several (``--face_index``, ``--face_box``).
"""

from collections.abc import Sequence
import dataclasses

import numpy as np

Landmarks = np.ndarray  # float32 (68, 2), pixel coordinates (x, y)
# Detections of one face at two scales overlap at least this much.
SAME_FACE_IOU = 0.4


@dataclasses.dataclass(frozen=True)
class Face:
  """One detected face of an image.

  Attributes:
    box: float64 (4,) x0, y0, x1, y1 in pixels of the image.
    score: the detector's confidence (NaN where a backend gives none).
    landmarks: its 68 landmarks.
  """
  box: np.ndarray
  score: float
  landmarks: Landmarks

  @property
  def area(self) -> float:
    return box_area(self.box)


def box_area(box: np.ndarray) -> float:
  return float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two (x0, y0, x1, y1) boxes."""
  inter = box_area(np.concatenate([np.maximum(a[:2], b[:2]),
                                   np.minimum(a[2:], b[2:])]))
  union = box_area(a) + box_area(b) - inter
  return inter / union if union > 0 else 0.0


def merge_detections(boxes: Sequence[np.ndarray], scores: Sequence[float]
                     ) -> tuple[list[np.ndarray], list[float]]:
  """Detections of several scales -> one per face (the best-scoring one)."""
  kept_boxes, kept_scores = [], []
  for i in sorted(range(len(boxes)), key=lambda i: -scores[i]):
    if all(box_iou(boxes[i], k) < SAME_FACE_IOU for k in kept_boxes):
      kept_boxes.append(boxes[i])
      kept_scores.append(scores[i])
  return kept_boxes, kept_scores


def rank_faces(boxes: Sequence[np.ndarray], scores: Sequence[float]
               ) -> list[int]:
  """Order of detections, largest first among confident ones (scoring at
  least half the best score), then the weak ones largest first.

  A weak false positive (e.g. a pattern on clothes) must not win because it
  is big, but stays listed for a user who points at it.
  """
  best = max(scores, default=0.0)
  return sorted(range(len(boxes)), key=lambda i: (scores[i] < 0.5 * best,
                                                  -box_area(boxes[i])))
