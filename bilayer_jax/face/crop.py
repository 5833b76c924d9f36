"""Face crops: the bi-layer original's landmark rule and the latent-pose (LPD) face-box rule.

``crop_face`` — the crop of the bi-layer original's inference wrapper (docs/model.md#crop).

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

``crop_latentpose`` — the "latentpose" crop style of the LPD official dataset tool, which needs only a face
box, no landmarks (docs/lpd.md#crop):

* frames larger than 1152 px on a side are first downscaled to 1152 (bilinear);
* square of side ``max(w, h) * 1.8`` around the box centre, its corners floored/ceiled to integers and made
  exactly square, both ends inclusive;
* where it leaves the image: mirror padding without repeating the edge, blended with a Gaussian blur of
  sigma ``0.016 * side`` (fully in the padding, fading out within a third of the padding's width inside the
  image), then faded towards the crop's median colour with the depth into the padding;
* resized to the output size, bicubic when enlarging relative to the box's height, else area averaging.
"""

import math

import cv2
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


# The crop rules a dataset can be built with (data_prep --crop_style), recorded with it and with the params
# trained on it, so that inference crops photos and drivers the same way.
CROP_STYLES = ('original', 'latentpose')
LATENTPOSE_SCALE = 1.8  # crop side / the box's longer side
LATENTPOSE_MAX_INPUT_SIDE = 1152
_LATENTPOSE_BLUR = 0.016  # blur sigma / crop side


def limit_side(image: np.ndarray, max_side: int = LATENTPOSE_MAX_INPUT_SIDE) -> np.ndarray:
  """The image downscaled (bilinear) so that its longer side is at most ``max_side``; else itself."""
  longest = max(image.shape[:2])
  if longest <= max_side:
    return image
  ratio = max_side / longest
  return cv2.resize(image, dsize=None, fx=ratio, fy=ratio)


def latentpose_box(face_box) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) of the latent-pose crop, right/bottom exclusive, for an x0, y0, x1, y1 box."""
  x0, y0, x1, y1 = (float(v) for v in face_box[:4])
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  half = max(y1 - y0, x1 - x0) / 2 * LATENTPOSE_SCALE
  left, top = math.floor(cx - half), math.floor(cy - half)
  right, bottom = math.ceil(cx + half), math.ceil(cy + half)
  bottom += (right - left) - (bottom - top)  # exactly square after rounding
  return left, top, right + 1, bottom + 1


def _padding_weights(h: int, w: int, pads: tuple[int, int, int, int]) -> np.ndarray:
  """(h, w, 1) depth into the padding, as a fraction of its width (<= 0 inside the image); pads t, b, l, r."""
  top, bottom, left, right = pads
  y, x = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
  inf = np.float32(np.inf)
  # Distance from each edge of the crop in units of that side's padding (infinite where there is none).
  from_left = x / left if left else np.full_like(x, inf)
  from_right = (w - 1 - x) / right if right else np.full_like(x, inf)
  from_top = y / top if top else np.full_like(y, inf)
  from_bottom = (h - 1 - y) / bottom if bottom else np.full_like(y, inf)
  depth = np.maximum(1 - np.minimum(from_left, from_right), 1 - np.minimum(from_top, from_bottom))
  return depth[..., None]


def _cut_with_soft_padding(image: np.ndarray, left: int, top: int, right: int, bottom: int) -> np.ndarray:
  """The uint8 box of an RGB image, the parts outside it mirrored, blurred and faded to the median colour."""
  h, w = image.shape[:2]
  inside = image[max(0, top):min(bottom, h), max(0, left):min(right, w)]
  pads = (max(0, -top), max(0, bottom - h), max(0, -left), max(0, right - w))
  if not any(pads):
    return inside
  padded = cv2.copyMakeBorder(inside, *pads, cv2.BORDER_REFLECT101)
  side = padded.shape[0]
  blurred = cv2.GaussianBlur(padded, (0, 0), side * _LATENTPOSE_BLUR).astype(np.float32) / 255
  out = padded.astype(np.float32) / 255
  depth = _padding_weights(*padded.shape[:2], pads)
  out += (blurred - out) * np.clip(depth * 3 + 1, 0, 1)
  out += (np.median(out, axis=(0, 1)) - out) * np.clip(depth, 0, 1)
  return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def crop_latentpose(image: np.ndarray, face_box, size: int,
                    landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """Crops the face of ``image`` around ``face_box`` by the latent-pose rule (see the module docstring).

  Args:
    image: uint8 image, RGB, RGBA or grayscale, already limited by ``limit_side``.
    face_box: x0, y0, x1, y1 of the face in pixels of ``image`` (a face detector's box).
    size: side of the square output crop.
    landmarks: optional (68, 2) landmarks in pixels of ``image``, moved with the crop.

  Returns:
    ``(crop, landmarks_in_crop or None)``: the uint8 (size, size, 3) RGB crop.

  Raises:
    ValueError: if the box is not finite or smaller than a pixel.
  """
  box = np.asarray(face_box, np.float64)[:4]
  if not np.all(np.isfinite(box)) or min(box[2] - box[0], box[3] - box[1]) < 1:
    raise ValueError(f'degenerate face box {box.tolist()}')
  left, top, right, bottom = latentpose_box(box)
  cut = _cut_with_soft_padding(images.to_rgb(image), left, top, right, bottom)
  enlarging = size > box[3] - box[1]
  crop = cv2.resize(cut, (size, size), interpolation=cv2.INTER_CUBIC if enlarging else cv2.INTER_AREA)
  if landmarks is None:
    return crop, None
  pts = (np.asarray(landmarks, np.float32)[:, :2] - np.float32([left, top])) * np.float32(size / (right - left))
  return crop, pts.astype(np.float32)


def crop_latentpose_frame(frame: np.ndarray, size: int, detect_box,
                          landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None] | None:
  """The official tool's whole per-frame step: the frame limited to 1152 px, the face detector's box found on
  that, the crop; `crop_latentpose`'s result, or None when the detector finds no face.

  Args:
    frame: uint8 RGB frame of any size.
    size: side of the output crop.
    detect_box: image -> x0, y0, x1, y1 of its largest face or None (`LandmarkBackend.detect_box`).
    landmarks: optional (68, 2) landmarks in pixels of `frame`, moved with the crop.
  """
  small = limit_side(frame)
  box = detect_box(small)
  if box is None:
    return None
  ratio = np.float32(small.shape[1] / frame.shape[1])
  moved = None if landmarks is None else np.asarray(landmarks, np.float32)[:, :2] * ratio
  return crop_latentpose(small, box, size, landmarks=moved)
