"""Per-video processing: frames -> face crops, keypoints, masks -> a record.

Each job (one person's video, see ``sources``) becomes one ``Record``: the
JPEG crops, PNG masks and (N, 68, 2) keypoints in crop pixels of its usable
frames. Records are cached as ``.npz`` files in a work folder, written under a
temporary name and renamed when complete, next to a ``.json`` status that
says what was kept and why frames or the whole video were dropped. The tfds
builder then only copies records into TFRecords, so an interrupted build
resumes where it stopped.
"""

import collections
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import time

import numpy as np
from PIL import Image

from bilayer_jax.face import crop as crop_lib
from bilayer_jax.face import images
from bilayer_jax.face import landmarks as landmarks_lib
from bilayer_jax.face import segmentation as segmentation_lib
from data_prep import sources


@dataclasses.dataclass(frozen=True)
class Options:
  """What the preprocessing does; part of the cache key and the metadata.

  Attributes:
    image_size: side of the stored square crops (the original stored 512).
    crop_style: 'original' (the bi-layer rule from the 68 landmarks) or 'latentpose' (the LPD official
      dataset's rule from the face detector's box alone, what the LPD family drives with).
    landmarks: landmark backend ('auto', 'dlib', 'face_alignment', ...).
    segmentation: segmentation backend (see segmentation.py).
    seg_erode: erosion disc diameter applied to masks (the original: 5).
    redetect_every: dlib tracking: full face detection every N frames.
    jpeg_quality: JPEG quality of the stored crops.
    frame_stride: keep every N-th decoded frame.
    max_frames: keep at most this many frames per video (0: all).
    min_frames: videos with fewer usable frames are skipped.
    min_face_size: frames whose landmarks span fewer pixels are dropped.
    min_input_side: sequences whose frames are smaller are skipped.
  """
  image_size: int = 256
  crop_style: str = 'original'
  landmarks: str = 'auto'
  segmentation: str = 'mediapipe_selfie'
  seg_erode: int = 0
  redetect_every: int = 8
  jpeg_quality: int = 95
  frame_stride: int = 1
  max_frames: int = 0
  min_frames: int = 2
  min_face_size: int = 24
  min_input_side: int = 32

  def fingerprint(self) -> str:
    blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass
class Record:
  """The processed frames of one video."""
  person_id: str
  video_id: str
  split: str
  frames: list[bytes]  # JPEG, image_size² RGB
  segs: list[bytes]  # PNG, image_size² grayscale
  keypoints: np.ndarray  # float32 (N, 68, 2), pixels of the stored crop
  frame_ids: list[str]  # 'SEQUENCE/FRAME_INDEX'

  def to_examples(self, frames_per_example: int = 0) -> list[dict]:
    """Splits the video into examples of at most ``frames_per_example``.

    Chunk c of C holds frames c, c + C, c + 2C, ...: every chunk spans the
    whole video, so pairs sampled inside a chunk are as far apart in time as
    pairs sampled in the whole video, while each read stays small.
    """
    n = len(self.frames)
    chunks = -(-n // frames_per_example) if frames_per_example else 1
    return [{'person_id': self.person_id, 'video_id': self.video_id,
             'frames': self.frames[c::chunks], 'segs': self.segs[c::chunks],
             'keypoints': self.keypoints[c::chunks],
             'frame_ids': self.frame_ids[c::chunks]} for c in range(chunks)]

  def save(self, path: pathlib.Path) -> None:
    """Writes atomically: a crash never leaves a partial record."""
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    with open(tmp, 'wb') as f:
      np.savez(f, keypoints=self.keypoints,
               frames=np.frombuffer(b''.join(self.frames), np.uint8),
               frame_sizes=np.array([len(b) for b in self.frames], np.int64),
               segs=np.frombuffer(b''.join(self.segs), np.uint8),
               seg_sizes=np.array([len(b) for b in self.segs], np.int64),
               frame_ids=np.array(self.frame_ids, dtype=np.str_),
               ids=np.array([self.person_id, self.video_id, self.split]))
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: os.PathLike) -> 'Record':
    with np.load(path) as z:
      def split_blob(blob, sizes):
        data, ends = blob.tobytes(), np.cumsum(sizes)
        return [data[e - s:e] for s, e in zip(sizes, ends)]
      person, video, split = (str(x) for x in z['ids'])
      return cls(person, video, split,
                 split_blob(z['frames'], z['frame_sizes']),
                 split_blob(z['segs'], z['seg_sizes']),
                 z['keypoints'].astype(np.float32),
                 [str(x) for x in z['frame_ids']])


class Processor:
  """Turns jobs into records; holds the (expensive) backends of one worker."""

  def __init__(
      self, options: Options,
      landmarks: landmarks_lib.LandmarkBackend | None = None,
      segmentation: segmentation_lib.SegmentationBackend | None = None):
    self.options = options
    self._landmarks = landmarks
    self._segmentation = segmentation

  @property
  def landmarks(self) -> landmarks_lib.LandmarkBackend:
    if self._landmarks is None:
      kwargs = ({'redetect_every': self.options.redetect_every}
                if self.options.landmarks == 'dlib' else {})
      self._landmarks = landmarks_lib.get_landmark_backend(
          self.options.landmarks, **kwargs)
    return self._landmarks

  @property
  def segmentation(self) -> segmentation_lib.SegmentationBackend:
    if self._segmentation is None:
      kwargs = {'erode': self.options.seg_erode} if self.options.seg_erode \
          else {}
      self._segmentation = segmentation_lib.get_segmentation_backend(
          self.options.segmentation, **kwargs)
    return self._segmentation

  def process(self, job: sources.Job) -> tuple[Record | None, dict]:
    """Returns (record or None if skipped, status for the report)."""
    start = time.perf_counter()
    acc = _Accumulator(job)
    for seq in job.sequences:
      try:
        if job.kind == 'original':
          self._import_original(seq, acc)
        else:
          self._process_media(seq, acc)
      except sources.UnreadableError as e:
        acc.fail('unreadable', f'{seq.seq_id}: {e}')
      except _SkipSequence as e:
        acc.fail('too_small', f'{seq.seq_id}: {e}')
    status = acc.status(self.options.min_frames)
    status['seconds'] = round(time.perf_counter() - start, 3)
    return (acc.record() if status['status'] == 'ok' else None), status

  def _frames(self, seq: sources.Sequence, acc: '_Accumulator'):
    """Decoded frames after striding, timed as 'decode'.

    The index of every yielded frame is queued on ``acc.pending`` so the
    consumer can name frames even when the landmark backend batches them.
    """
    it = sources.read_frames(seq, acc.errors)
    while True:
      t = time.perf_counter()
      index, frame = next(it, (None, None))
      acc.timing['decode'] += time.perf_counter() - t
      if index is None:
        return
      if (index - seq.start) % self.options.frame_stride:
        continue
      acc.frames_read += 1
      if frame is None:
        acc.drop('unreadable')
        continue
      if min(frame.shape[:2]) < self.options.min_input_side:
        raise _SkipSequence(
            f'frames too small ({frame.shape[1]}x{frame.shape[0]} < '
            f'min_input_side {self.options.min_input_side})')
      acc.pending.append(index)
      yield frame

  def _process_media(self, seq: sources.Sequence, acc: '_Accumulator'):
    opts = self.options
    acc.pending.clear()
    detected = self.landmarks.detect_video(self._frames(seq, acc))
    chunk = []
    while True:
      t = time.perf_counter()
      decode_before = acc.timing['decode']
      item = next(detected, None)
      acc.timing['landmarks'] += (time.perf_counter() - t
                                  - (acc.timing['decode'] - decode_before))
      if item is not None:
        frame, lms = item
        frame_id = f'{seq.seq_id}/{acc.pending.popleft():06d}'
        if lms is None:
          acc.drop('no_face')
        elif float((lms.max(0) - lms.min(0)).max()) < opts.min_face_size:
          acc.drop('face_too_small')
        else:
          chunk.append((frame_id, frame, lms))
      full = acc.full(opts.max_frames, pending=len(chunk))
      if chunk and (item is None or full or len(chunk) == _CHUNK):
        self._crop_segment_encode(chunk, acc)
        chunk = []
      if item is None or full:
        return

  def _crop_segment_encode(self, chunk, acc: '_Accumulator') -> None:
    """Crops, segments and encodes a few frames, one stage at a time.

    Running each stage over a chunk keeps its code and model weights in the
    CPU caches; interleaving the stages per frame was slower
    (docs/benchmarks.md#other-measurements-behind-code-choices).
    """
    opts = self.options
    t = time.perf_counter()
    crops = [self._crop(frame, lms) for _, frame, lms in chunk]
    for _ in range(crops.count(None)):
      acc.drop('no_face_box')
    chunk = [item for item, crop in zip(chunk, crops) if crop is not None]
    crops = [crop for crop in crops if crop is not None]
    jpegs = [images.encode_jpeg(c, opts.jpeg_quality) for c, _ in crops]
    t2 = time.perf_counter()
    masks = [self.segmentation.segment(c) for c, _ in crops]
    t3 = time.perf_counter()
    pngs = [images.encode_png(_mask_to_uint8(m)) for m in masks]
    acc.timing['segmentation'] += t3 - t2
    acc.timing['crop_encode'] += (t2 - t) + (time.perf_counter() - t3)
    for (frame_id, _, _), (_, kps), jpeg, png in zip(chunk, crops, jpegs,
                                                     pngs):
      acc.keep(jpeg, png, kps, frame_id)

  def _crop(self, frame: np.ndarray, lms: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(crop, keypoints in the crop) by the crop style; None where 'latentpose' finds no face box."""
    size = self.options.image_size
    if self.options.crop_style == 'original':
      return crop_lib.crop_face(frame, lms, size)
    try:
      return crop_lib.crop_latentpose_frame(frame, size, self.landmarks.detect_box, lms)
    except ValueError:  # a degenerate box: no face box
      return None

  def _import_original(self, seq: sources.Sequence, acc: '_Accumulator'):
    """Frames of the original's layout: no detection, optional resize."""
    size = self.options.image_size
    imgs_dir = pathlib.Path(seq.path)
    kps_dir, segs_dir = (_mirror(imgs_dir, tree) for tree in
                         ('keypoints', 'segs'))
    stems = _stems(imgs_dir, '.jpg') & _stems(kps_dir, '.npy')
    have_segs = segs_dir.parents[3].is_dir()  # ROOT/segs exists
    if have_segs:
      stems &= _stems(segs_dir, '.png')
    for stem in sorted(stems):
      if acc.full(self.options.max_frames):
        return
      acc.frames_read += 1
      try:
        jpeg = (imgs_dir / f'{stem}.jpg').read_bytes()
        with Image.open(io.BytesIO(jpeg)) as img:
          width = img.size[0]
          rgb = np.asarray(img.convert('RGB'))
        kps = np.load(kps_dir / f'{stem}.npy').astype(np.float32)[:68, :2]
        if kps.shape != (68, 2) or not np.isfinite(kps).all():
          raise ValueError(f'bad keypoints shape {kps.shape}')
        if have_segs:
          png = (segs_dir / f'{stem}.png').read_bytes()
          with Image.open(io.BytesIO(png)) as seg:
            seg_mode, seg_size = seg.mode, seg.size
            gray = np.asarray(seg.convert('L'))
      except (OSError, ValueError) as e:
        acc.drop('unreadable')
        acc.errors.append(f'{seq.seq_id}/{stem}: {e}')
        continue
      # The original divides both coordinates by the stored WIDTH (see
      # docs/model.md#loading-and-normalisation); scaling both by
      # size / width keeps that after resizing.
      kps = kps * np.float32(size / width)
      if rgb.shape[:2] != (size, size):
        jpeg = images.encode_jpeg(images.resize_bicubic(rgb, size),
                                  self.options.jpeg_quality)
        rgb = images.resize_bicubic(rgb, size)
      if not have_segs:
        png = images.encode_png(_mask_to_uint8(self.segmentation.segment(rgb)))
      elif seg_mode != 'L' or seg_size != (size, size):
        png = images.encode_png(images.resize_bicubic(gray, size))
      acc.keep(jpeg, png, kps, f'{seq.seq_id}/{stem}')


_CHUNK = 16  # frames per stage-at-a-time chunk


class _SkipSequence(Exception):
  """A sequence is unusable as a whole (e.g. frames too small)."""


def _mask_to_uint8(mask: np.ndarray) -> np.ndarray:
  return np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8)


def _mirror(imgs_path: pathlib.Path, tree: str) -> pathlib.Path:
  """ROOT/imgs/SPLIT/P/V/SEQ -> ROOT/<tree>/SPLIT/P/V/SEQ."""
  parts = list(imgs_path.parts)
  i = len(parts) - 1 - parts[::-1].index('imgs')
  return pathlib.Path(*parts[:i], tree, *parts[i + 1:])


def _stems(directory: pathlib.Path, ext: str) -> set[str]:
  if not directory.is_dir():
    return set()
  return {p.stem for p in directory.iterdir() if p.suffix.lower() == ext}


class _Accumulator:
  """Collects kept frames, drop counts and timings of one job."""

  def __init__(self, job: sources.Job):
    self.job = job
    self.frames, self.segs, self.kps, self.ids = [], [], [], []
    self.dropped: dict[str, int] = {}
    self.errors: list[str] = []
    self.frames_read = 0
    self.timing = dict.fromkeys(
        ('decode', 'landmarks', 'segmentation', 'crop_encode'), 0.0)
    self.pending: collections.deque[int] = collections.deque()
    self.failure: str | None = None  # reason code of a failed sequence

  def full(self, max_frames: int, pending: int = 0) -> bool:
    return bool(max_frames) and len(self.frames) + pending >= max_frames

  def drop(self, reason: str) -> None:
    self.dropped[reason] = self.dropped.get(reason, 0) + 1

  def fail(self, code: str, message: str) -> None:
    """A whole sequence is unusable; the first such code explains a skip."""
    self.failure = self.failure or code
    self.errors.append(message)

  def keep(self, jpeg, png, kps, frame_id) -> None:
    self.frames.append(jpeg)
    self.segs.append(png)
    self.kps.append(kps)
    self.ids.append(frame_id)

  def status(self, min_frames: int) -> dict:
    job, kept = self.job, len(self.frames)
    status = {'key': job.key, 'split': job.split, 'status': 'ok',
              'frames_read': self.frames_read, 'frames_kept': kept,
              'dropped': self.dropped, 'errors': self.errors[:20],
              'sources': [s.path for s in job.sequences],
              'timing': {k: round(v, 4) for k, v in self.timing.items()}}
    if kept < min_frames:
      status['status'] = 'skipped'
      if kept == 0 and self.failure:
        status['reason_code'] = self.failure
        status['reason'] = '; '.join(self.errors)
      else:
        status['reason_code'] = 'too_short'
        status['reason'] = (
            f'{kept} usable of {self.frames_read} frames < min_frames '
            f'{min_frames} (dropped: {self.dropped or "none"})')
    return status

  def record(self) -> Record:
    job = self.job
    return Record(job.person_id, job.video_id, job.split, self.frames,
                  self.segs, np.stack(self.kps).astype(np.float32), self.ids)
