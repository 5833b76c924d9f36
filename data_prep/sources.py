"""Finding the input videos and reading their frames.

A *job* is one dataset example: one video of one person, made of one or more
*sequences* (video files or folders of frame images) whose frames are pooled,
as the original pooled all sequences of a PERSON/VIDEO (docs/model.md#dataset-layout).

Identity, video and split come from the path relative to the input root:

* ``.../PERSON/VIDEO/CLIP.mp4`` (three or more levels, the VoxCeleb2 layout
  ``id00012/21Uxsk56VDQ/00001.mp4``): clips of one VIDEO are pooled;
* ``PERSON/CLIP.mp4``: every clip is its own video of PERSON;
* ``CLIP.mp4``: every clip is its own person and video.

Folders of images (``.jpg``, ``.png``, ...) count as one sequence each, with
the folder's path in place of the clip's. The split is ``test`` if a path
component above PERSON is ``test``, ``train`` if one is ``train`` or ``dev``
(VoxCeleb2 ships ``dev/`` and ``test/``), else decided by a hash of PERSON so
that identities never straddle splits.
"""

import collections
from collections.abc import Iterator
import contextlib
import dataclasses
import hashlib
import os
import pathlib

import av
import numpy as np
from PIL import Image

from bilayer_jax import errors
from bilayer_jax.face import images

VIDEO_EXTENSIONS = frozenset(
    '.mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .flv .wmv .ts .3gp'.split())
IMAGE_EXTENSIONS = frozenset('.jpg .jpeg .png .bmp .webp .tif .tiff'.split())
_MAX_LISTED = 5  # skipped videos named in a NoUsableVideoError


class UnreadableError(Exception):
  """An input cannot be decoded at all (corrupt, truncated, not media)."""


class NoUsableVideoError(errors.UserError):
  """No input video can be used; the message lists what was tried and why."""

  def __init__(self, root: str, skipped: list[tuple[str, str, str]],
               num_ignored: int = 0):
    """Builds the one-line message.

    Args:
      root: the input folder.
      skipped: (video key, reason code, reason) of every video tried.
      num_ignored: files ignored as neither video nor image.
    """
    ignored = (f'; {num_ignored} other file(s) ignored as neither video nor '
               'image' if num_ignored else '')
    if not skipped:
      super().__init__(
          f'--input {root}: found no video file '
          f'({" ".join(sorted(VIDEO_EXTENSIONS))}) and no folder of images '
          f'({" ".join(sorted(IMAGE_EXTENSIONS))}){ignored}')
      return
    codes = collections.Counter(code for _, code, _ in skipped)
    counts = ', '.join(f'{code}: {n}' for code, n in sorted(codes.items()))
    # One line: decoder messages may span several.
    listed = '; '.join(f'{key}: {" ".join(reason.split())}'
                       for key, _, reason in skipped[:_MAX_LISTED])
    if len(skipped) > _MAX_LISTED:
      listed += f'; and {len(skipped) - _MAX_LISTED} more'
    super().__init__(
        f'--input {root}: no usable video, all {len(skipped)} tried were '
        f'skipped ({counts}){ignored}: {listed}')


@dataclasses.dataclass(frozen=True)
class Sequence:
  """Frames ``[start, stop)`` of a video file or of an image folder."""
  path: str
  seq_id: str
  start: int = 0
  stop: int | None = None


@dataclasses.dataclass(frozen=True)
class Job:
  """One dataset example: the pooled sequences of one person's video.

  ``kind`` is 'media' for raw videos/images (detect, crop, segment) and
  'original' for frames already prepared in the original's layout.
  """
  person_id: str
  video_id: str
  split: str
  sequences: tuple[Sequence, ...]
  kind: str = 'media'

  @property
  def key(self) -> str:
    return f'{self.person_id}/{self.video_id}'

  def fingerprint(self) -> str:
    """Changes when an input file changes (size or mtime) or the job does."""
    h = hashlib.sha1(repr(self).encode())
    for seq in self.sequences:
      st = os.stat(seq.path)
      h.update(f'{st.st_size}:{st.st_mtime_ns}'.encode())
    return h.hexdigest()[:16]


def hash_split(person_id: str, test_fraction: float) -> str:
  digest = hashlib.sha1(person_id.encode()).digest()
  return 'test' if int.from_bytes(digest[:4], 'big') < test_fraction * 2**32 \
      else 'train'


def _list_media(root: pathlib.Path, patterns: tuple[str, ...]
                ) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
  """(sequences, ignored files) under root, both sorted."""
  if patterns:
    candidates = sorted({p for pat in patterns for p in root.glob(pat)})
  else:
    candidates = sorted(root.rglob('*'))
  seqs, ignored, image_dirs = [], [], set()
  for path in candidates:
    if path.is_dir() or path.name.startswith('.'):
      continue
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
      seqs.append(path)
    elif ext in IMAGE_EXTENSIONS:
      image_dirs.add(path.parent)
    else:
      ignored.append(path)
  return sorted(seqs + list(image_dirs)), ignored


def discover(root: str, patterns: tuple[str, ...] = (),
             test_fraction: float = 0.05) -> tuple[list[Job], list[str]]:
  """Groups the videos/image folders under ``root`` into jobs.

  Args:
    root: input folder.
    patterns: optional globs relative to root (e.g. ``'**/*.mp4'``); default
      everything below root.
    test_fraction: share of identities hashed into the test split when the
      path names no split.

  Returns:
    (jobs sorted by key, paths of ignored non-media files).
  """
  root_path = pathlib.Path(root)
  seq_paths, ignored = _list_media(root_path, patterns)
  groups: dict[tuple[str, str, str], list[Sequence]] = {}
  for path in seq_paths:
    rel = path.relative_to(root_path)
    parts = list((rel.with_suffix('') if path.is_file() else rel).parts)
    if not parts:  # root itself is a folder of frames
      parts = [root_path.resolve().name]
    person, video = (parts[-3], parts[-2]) if len(parts) >= 3 else (
        parts[0], parts[-1])
    above = {p.lower() for p in parts[:-3]}
    split = ('test' if 'test' in above else
             'train' if above & {'train', 'dev'} else
             hash_split(person, test_fraction))
    groups.setdefault((split, person, video), []).append(
        Sequence(str(path), parts[-1]))
  jobs = [Job(p, v, s, tuple(seqs)) for (s, p, v), seqs in groups.items()]
  return sorted(jobs, key=lambda j: j.key), [str(p) for p in ignored]


def _video_frames(seq: Sequence) -> Iterator[tuple[int, np.ndarray]]:
  try:
    container = av.open(seq.path)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise UnreadableError(f'cannot open: {e}') from e
  with container:
    if not container.streams.video:
      raise UnreadableError('no video stream')
    stream = container.streams.video[0]
    # One decoding thread per worker: the worker pool already fills the cores.
    stream.thread_type = 'NONE'
    for i, frame in enumerate(container.decode(stream)):
      if seq.stop is not None and i >= seq.stop:
        return
      if i >= seq.start:
        yield i, frame.to_ndarray(format='rgb24')


def _image_frames(seq: Sequence, errors: list[str]
                  ) -> Iterator[tuple[int, np.ndarray | None]]:
  files = sorted(p for p in pathlib.Path(seq.path).iterdir()
                 if p.suffix.lower() in IMAGE_EXTENSIONS)
  stop = len(files) if seq.stop is None else seq.stop
  for i in range(seq.start, min(stop, len(files))):
    try:
      with Image.open(files[i]) as img:
        frame = images.to_rgb(np.asarray(img.convert('RGB')))
    except (OSError, ValueError) as e:
      errors.append(f'{files[i].name}: unreadable ({e})')
      frame = None
    yield i, frame


def read_frames(seq: Sequence, errors: list[str]
                ) -> Iterator[tuple[int, np.ndarray | None]]:
  """Yields (frame index, uint8 RGB frame) for the frames of a sequence.

  The frame is None for an image file that cannot be read (the sequence goes
  on); the index is the frame's position in the video or folder.

  Args:
    seq: the sequence.
    errors: receives a message for each frame or stream error that ended or
      thinned the sequence early (frames decoded before it are kept).

  Raises:
    UnreadableError: nothing can be decoded (not a video, corrupt header).
  """
  if os.path.isdir(seq.path):
    yield from _image_frames(seq, errors)
    return
  count = 0
  try:
    for item in _video_frames(seq):
      count += 1
      yield item
  except av.error.FFmpegError as e:
    if count == 0:
      raise UnreadableError(f'cannot decode: {e}') from e
    errors.append(f'decoding stopped after {count} frames: {e}')


def probe(seq: Sequence) -> str | None:
  """Why the sequence yields no frame at all; None when it yields one.

  Cheap for a good input (decodes up to its first readable frame).
  """
  reasons = []
  try:
    with contextlib.closing(read_frames(seq, reasons)) as frames:
      if any(frame is not None for _, frame in frames):
        return None
  except UnreadableError as e:
    return str(e)
  return '; '.join(reasons) or 'no frames'


def check_usable(root: str, jobs: list[Job], num_ignored: int = 0) -> None:
  """Returns at the first job with a readable frame.

  Raises:
    NoUsableVideoError: no job has one (or there is no job).
  """
  skipped = []
  for job in jobs:
    reasons = []
    for seq in job.sequences:
      reason = probe(seq)
      if reason is None:
        return
      reasons.append(f'{seq.seq_id}: {reason}')
    skipped.append((job.key, 'unreadable', '; '.join(reasons)))
  raise NoUsableVideoError(root, skipped, num_ignored)
