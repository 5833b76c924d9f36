"""Stickman images drawn from 68 facial keypoints, as the original draws them.

The identity embedder (source) and the discriminator (target) see a rasterised
"stickman" of the keypoints next to the RGB frame. Parity with the original is
pixel-exact (tests/test_data_stickman.py compares against images the original
code produced), which pins down every detail below:

* coordinates ``(p + 1) / 2 * size`` are computed in float32 and truncated
  towards zero (not rounded), so points on exact pixel boundaries land where
  float32 rounding puts them;
* lines are OpenCV ``polylines`` with 8-connected rasterisation and no
  anti-aliasing;
* the canvas starts at 1 (not 0), so the background is ``(1/255 - .5) * 2``.

``draw_fsth_sketches`` draws the FSTH reference's coloured sketches of the same poses instead
(``bilayer_jax.face.sketch``); ``STYLES`` names both for the input pipeline.
"""

from collections.abc import Sequence

import cv2
import numpy as np

from bilayer_jax.face import sketch

# (keypoint indices, closed polyline, RGB colour) per face part, in drawing
# order; later parts overwrite earlier ones where they overlap. The nose
# bridge repeats point 30 and then jumps to 33, the tip of the nose base.
FACE_PARTS: Sequence[tuple[tuple[int, ...], bool, tuple[int, int, int]]] = (
    (tuple(range(0, 17)), False, (255, 255, 255)),  # jaw
    (tuple(range(17, 22)), False, (255, 0, 0)),  # right eyebrow
    (tuple(range(22, 27)), False, (0, 255, 0)),  # left eyebrow
    ((27, 28, 29, 30, 30, 33), False, (0, 0, 255)),  # nose bridge
    (tuple(range(31, 36)), False, (0, 0, 255)),  # nose base
    (tuple(range(36, 42)), True, (255, 0, 255)),  # right eye
    (tuple(range(42, 48)), True, (0, 255, 255)),  # left eye
    (tuple(range(48, 60)), True, (255, 255, 0)),  # outer lips
    (tuple(range(60, 68)), True, (255, 255, 0)),  # inner lips
)

NUM_KEYPOINTS = 68


def keypoints_to_pixels(pose: np.ndarray, image_size: int) -> np.ndarray:
  """Maps one (136,) pose in [-1, 1] to (68, 2) int32 pixel coordinates."""
  xy = np.asarray(pose, np.float32).reshape(NUM_KEYPOINTS, 2)
  # Every step stays float32 like the original: in float64 a point within
  # rounding distance of a pixel boundary could land in the next pixel.
  xy = (xy + np.float32(1)) / np.float32(2) * np.float32(image_size)
  return xy.astype(np.int32)


def draw_stickman(pose: np.ndarray, image_size: int,
                  thickness: int = 2) -> np.ndarray:
  """Draws one stickman as a uint8 (S, S, 3) RGB canvas (background 1)."""
  pts = keypoints_to_pixels(pose, image_size)
  canvas = np.ones((image_size, image_size, 3), np.uint8)
  for indices, closed, color in FACE_PARTS:
    part = np.ascontiguousarray(pts[list(indices)].reshape(-1, 1, 2))
    cv2.polylines(canvas, [part], closed, color, thickness=thickness,
                  lineType=cv2.LINE_8)
  return canvas


def draw_stickmen(poses: np.ndarray, image_size: int,
                  thickness: int = 2) -> np.ndarray:
  """Draws stickmen for a batch of poses.

  Args:
    poses: (N, 136) keypoints in [-1, 1], laid out (x0, y0, x1, y1, ...).
      Points outside [-1, 1] are allowed (lines are clipped by OpenCV).
    image_size: side S of the square output images.
    thickness: line thickness in pixels (the original's default is 2).

  Returns:
    float32 (N, S, S, 3) NHWC images in [-1, 1].
  """
  poses = np.asarray(poses, np.float32).reshape(-1, 2 * NUM_KEYPOINTS)
  out = np.empty((len(poses), image_size, image_size, 3), np.float32)
  for i, pose in enumerate(poses):
    canvas = draw_stickman(pose, image_size, thickness)
    out[i] = (canvas.astype(np.float32) / np.float32(255) - np.float32(0.5)
              ) * np.float32(2)
  return out


def draw_fsth_sketches(poses: np.ndarray, image_size: int, thickness: int = 2) -> np.ndarray:
  """The FSTH reference's coloured landmark sketches (`bilayer_jax.face.sketch`) for a batch of poses.

  Args:
    poses: (N, 136) keypoints in [-1, 1] of a square crop, laid out (x0, y0, x1, y1, ...).
    image_size: side S of the square output images.
    thickness: unused (the sketch's line width is the reference's 2 points); kept for a common signature.

  Returns:
    float32 (N, S, S, 3) NHWC images in [-1, 1] (white background).
  """
  del thickness
  points = (np.asarray(poses, np.float32).reshape(-1, 68, 2) + 1) / 2 * image_size
  images = np.stack([sketch.sketch(p, image_size, image_size) for p in points])
  return images.astype(np.float32) / 255 * 2 - 1


# Landmark-image styles the input pipeline can draw (`input_pipeline.create_dataset(landmark_style=...)`).
STYLES = {'stickman': draw_stickmen, 'fsth_sketch': draw_fsth_sketches}
