"""Small image helpers shared by the preprocessing stages."""

import io

import cv2
import numpy as np
from PIL import Image


def to_rgb(image: np.ndarray) -> np.ndarray:
  """Returns ``image`` as contiguous uint8 (H, W, 3) RGB.

  Accepts grayscale (H, W) or (H, W, 1), RGB and RGBA (alpha is dropped), so
  grayscale videos and PNG sequences go through the same code as colour ones.

  Raises:
    ValueError: for other shapes or non-uint8 data.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'expected a uint8 image, got {image.dtype}')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f'expected (H, W[, 1|3|4]) image, got {image.shape}')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:
    image = image[..., :3]
  return np.ascontiguousarray(image)


def to_gray(image: np.ndarray) -> np.ndarray:
  """uint8 RGB (or already gray) image -> uint8 (H, W) luma."""
  if image.ndim == 2:
    return image
  return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  """Encodes uint8 RGB (H, W, 3) as baseline JPEG (4:2:0, like PIL's)."""
  ok, buf = cv2.imencode('.jpg', image[..., ::-1],
                         [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise ValueError('JPEG encoding failed')
  return buf.tobytes()


def encode_png(image: np.ndarray) -> bytes:
  """Encodes a uint8 (H, W) or (H, W, 3) RGB image as PNG (fast setting)."""
  if image.ndim == 3:
    image = image[..., ::-1]
  # Level 1: masks are smooth, so stronger levels gain little and cost much more time
  # (docs/benchmarks.md#other-measurements-behind-code-choices).
  ok, buf = cv2.imencode('.png', image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
  if not ok:
    raise ValueError('PNG encoding failed')
  return buf.tobytes()


def decode(data: bytes, mode: str = 'RGB') -> np.ndarray:
  """Decodes JPEG/PNG bytes with PIL (as the original's loader) to uint8."""
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert(mode))


def resize_bicubic(image: np.ndarray, size: int) -> np.ndarray:
  """PIL bicubic resize of a uint8 (H, W[, C]) image to (size, size)."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  squeeze = image.ndim == 3 and image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
  return out[..., None] if squeeze else out
