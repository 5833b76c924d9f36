"""The face crop of the original's inference wrapper (docs/model.md#crop).

The original's loader does no cropping: its training frames were pre-cropped
and the repository never says how. Its inference wrapper does crop, and the
training data must match what the model sees at inference, so the dataset uses
exactly that rule:

* box of the 68 landmarks; ``centre = round((min + max) / 2)`` (numpy rounding,
  half to even) and ``side = int(max(x extent, y extent))``;
* the centre moves up by ``side // 6`` (integer division, after rounding);
* the square ``[c - side, c + side)`` is cut with zero (black) padding outside
  the image, then resized to the output size with PIL's bicubic filter;
* keypoints move with the crop: ``(p - (c - side)) * size / (2 * side)``.
"""

import numpy as np
from PIL import Image

from bilayer_jax.face import images


def crop_box(landmarks: np.ndarray) -> tuple[int, int, int]:
  """Returns (centre_x, centre_y, side) of the crop for (68, 2) landmarks.

  The square cut out is ``[cx - side, cx + side) x [cy - side, cy + side)``.

  Raises:
    ValueError: if the landmarks are not finite or span less than a pixel.
  """
  pts = np.asarray(landmarks, np.float32)[:, :2]
  if not np.all(np.isfinite(pts)):
    raise ValueError('landmarks contain NaN or inf')
  lo, hi = pts.min(0), pts.max(0)
  centre = ((lo + hi) / 2).round().astype(np.int64)
  side = int(max(hi[0] - lo[0], hi[1] - lo[1]))
  if side < 1:
    raise ValueError(f'degenerate landmarks: extent {hi - lo} px')
  return int(centre[0]), int(centre[1] - side // 6), side


def crop_face(image: np.ndarray, landmarks: np.ndarray,
              size: int) -> tuple[np.ndarray, np.ndarray]:
  """Crops the face as the original's inference wrapper does.

  Args:
    image: uint8 image, (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grayscale.
    landmarks: (68, 2) (or (68, 3); z is ignored) landmarks in pixels of
      ``image``.
    size: side of the square output crop in pixels.

  Returns:
    ``(crop, landmarks_in_crop)``: the uint8 (size, size, 3) RGB crop and the
    float32 (68, 2) landmarks in pixel coordinates of the crop.
  """
  cx, cy, side = crop_box(landmarks)
  pil = Image.fromarray(images.to_rgb(image))
  # PIL fills the part of the box outside the image with zeros (black).
  box = (cx - side, cy - side, cx + side, cy + side)
  crop = pil.crop(box).resize((size, size), Image.Resampling.BICUBIC)
  offset = np.array([cx - side, cy - side], np.float32)
  scale = np.float32(size) / np.float32(2 * side)
  pts = (np.asarray(landmarks, np.float32)[:, :2] - offset) * scale
  return np.asarray(crop), pts.astype(np.float32)
