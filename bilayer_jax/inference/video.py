"""Video and image I/O for inference: PyAV decoding, H.264 mp4 writing (atomic), image reading and writing.

`read_image` turns any PIL-readable photo into 8-bit RGB the detectors and the model accept: EXIF
orientation applied (phone photos), grayscale and palette images expanded, transparent areas (RGBA, LA,
palette transparency) composited onto white, 16-bit and 32-bit/float grayscale scaled to 8 bits.
"""

import os
import pathlib
import tempfile
from typing import Iterable, Iterator, Optional, Tuple

import av
import numpy as np
from PIL import Image
from PIL import ImageOps

from bilayer_jax import errors


class MediaError(errors.UserError, ValueError):
  """A photo or video that cannot be read; the message names the file."""


def _to_8bit_gray(img: Image.Image) -> Image.Image:
  """16/32-bit integer or float grayscale -> 8-bit (PIL's own conversion clips them at 255)."""
  values = np.asarray(img, np.float64)
  if img.mode == 'F' and values.max(initial=0) <= 1:
    values = values * 255  # float images in [0, 1]
  elif img.mode.startswith('I;16') or values.max(initial=0) > 255:
    values = values / 257  # 16-bit range (32-bit 'I' images from PNG/TIFF hold 16-bit data)
  return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), 'L')


def _to_rgb(img: Image.Image) -> np.ndarray:
  img = ImageOps.exif_transpose(img)
  if img.mode in ('F', 'I') or img.mode.startswith('I;16'):
    img = _to_8bit_gray(img)
  if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (img.mode == 'P' and 'transparency' in img.info):
    rgba = img.convert('RGBA')
    img = Image.alpha_composite(Image.new('RGBA', rgba.size, (255, 255, 255, 255)), rgba)
  return np.asarray(img.convert('RGB'))


def read_image(path: os.PathLike) -> np.ndarray:
  """Any PIL-readable image -> uint8 (H, W, 3) RGB (see the module docstring)."""
  try:
    with Image.open(path) as img:
      return _to_rgb(img)
  except (OSError, ValueError) as e:
    raise MediaError(f'{path}: cannot read the image ({e})') from e


def read_still(path: os.PathLike) -> np.ndarray:
  """An image file, or else the first frame of a video file (a person given by a clip of them)."""
  try:
    return read_image(path)
  except MediaError as not_an_image:
    try:
      frame = next(iter(read_video(path, 1)), None)
    except MediaError:
      frame = None
    if frame is None:
      raise MediaError(f'{path}: neither an image nor a video with a frame') from not_an_image
    return frame


def probe_video(path: os.PathLike) -> Tuple[float, Optional[int]]:
  """(frames per second, number of frames or None if the container does not say)."""
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise MediaError(f'{path}: no video stream')
      stream = container.streams.video[0]
      fps = float(stream.average_rate or stream.guessed_rate or 25)
      return fps, (stream.frames or None)
  except av.error.FFmpegError as e:
    raise MediaError(f'{path}: cannot open the video ({e})') from e


def read_video(path: os.PathLike, max_frames: Optional[int] = None) -> Iterator[np.ndarray]:
  """Yields uint8 (H, W, 3) RGB frames (decoding errors after the first frame end the stream with an
  error naming the file and frame)."""
  try:
    container = av.open(str(path))
  except (av.error.FFmpegError, OSError) as e:
    raise MediaError(f'{path}: cannot open the video ({e})') from e
  with container:
    if not container.streams.video:
      raise MediaError(f'{path}: no video stream')
    i = 0
    try:
      for frame in container.decode(container.streams.video[0]):
        if max_frames is not None and i >= max_frames:
          return
        yield frame.to_ndarray(format='rgb24')
        i += 1
    except av.error.FFmpegError as e:
      raise MediaError(f'{path}: decoding failed at frame {i} ({e})') from e
    if i == 0:
      raise MediaError(f'{path}: the video has no decodable frames')


def write_mp4(path: os.PathLike, frames: Iterable[np.ndarray], fps: float, crf: int = 18) -> int:
  """Writes uint8 RGB frames as H.264 mp4 (yuv420p). The file appears only when complete (temp name,
  then rename); returns the number of frames written."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.stem}.tmp-', suffix='.mp4')
  os.close(fd)
  count = 0
  try:
    with av.open(tmp, mode='w') as container:
      stream = container.add_stream('libx264', rate=max(1, round(fps)))
      stream.pix_fmt = 'yuv420p'
      stream.options = {'crf': str(crf)}
      for frame in frames:
        if count == 0:
          # yuv420p needs even sizes.
          stream.height, stream.width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
        frame = np.ascontiguousarray(frame[:stream.height, :stream.width])
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
          container.mux(packet)
        count += 1
      if count:
        for packet in stream.encode():
          container.mux(packet)
    if not count:
      raise MediaError(f'{path}: no frames to write')
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; a video is meant to be shared
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return count


def write_image(path: os.PathLike, image: np.ndarray) -> None:
  """Writes a uint8 RGB image in the format its suffix names (PNG, JPEG, ...); the file appears only when
  complete (temp name, then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.stem}.tmp-', suffix=path.suffix)
  os.close(fd)
  try:
    try:
      Image.fromarray(np.asarray(image, np.uint8)).save(tmp)
    except (ValueError, OSError) as e:  # e.g. an unknown suffix
      raise MediaError(f'{path}: cannot write the image ({e})') from e
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; a picture is meant to be shared
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
