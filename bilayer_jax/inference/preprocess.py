"""Photo/frame preprocessing for inference: the same detection, crop, keypoint and mask rules as the
training data (data_prep), so the model sees at inference what it saw in training.

Per image: the 68 landmarks of one face (bilayer_jax.face.landmarks backends; dlib searches photos at several
scales), the original's inference crop (bilayer_jax.face.crop: square of 2x the landmark extent, centre moved up
by 1/6) cut at `crop_size` pixels (the datasets' stored size, 256 by default) and resized with PIL bicubic
to the model's image size, as the input pipeline does; keypoints divided by the crop size and mapped to
[-1, 1]; the person mask of the segmentation backend, quantised to 8 bits like the stored PNG masks; the
stickman drawn from the keypoints. Driving frames are cropped around their own face (as the original's
infer.py does), so only their keypoints are needed.

The source photo's face is the largest one found unless `face_index` (0 = largest) or `face_box` (the
detected face overlapping a box the most) chooses another; `SourceInputs.faces` lists them all. Driving
videos are checked with `open_driver` (before any slow setup) and `FaceCoverage` (fails when no frame, or
more than `max_faceless_fraction` of the frames, has a face), shared by `drive` and `export`.
"""

import dataclasses
import os
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from bilayer_jax import errors
from bilayer_jax.data import stickman
from bilayer_jax.face import crop as crop_lib
from bilayer_jax.face import detection
from bilayer_jax.face import images
from bilayer_jax.face import landmarks as landmarks_lib
from bilayer_jax.face import segmentation as segmentation_lib
from bilayer_jax.inference import video


# Drivers with more frames than this without a face are rejected (they would animate a still).
DEFAULT_MAX_FACELESS_FRACTION = 0.5
FaceBox = Union[str, Sequence[float], np.ndarray]  # 'x0,y0,x1,y1' or 4 numbers, pixels of the photo


class NoFaceError(errors.UserError, ValueError):
  """No face was found where one is required (the source photo, a driving video)."""


class DriverFaceError(NoFaceError):
  """A driving video without a face in any frame, or in too few of them (--max_faceless_fraction)."""


class OptionError(errors.UserError, ValueError):
  """An inference option (the message names its flag) with a value that does not fit."""


class FaceSelectionError(OptionError):
  """--face_index / --face_box name no face of the photo; the message lists the faces found."""


@dataclasses.dataclass
class SourceInputs:
  """One preprocessed source photo, model-ready (NHWC, leading (1, 1) = (batch, frames))."""
  imgs: np.ndarray  # (1, 1, S, S, 3) float32 in [-1, 1]
  segs: np.ndarray  # (1, 1, S, S, 1) float32 in [0, 1]
  stickmen: np.ndarray  # (1, 1, S, S, 3) float32 in [-1, 1]
  poses: np.ndarray  # (1, 1, 136) float32 in [-1, 1]
  crop: np.ndarray  # (S, S, 3) uint8 RGB: the face crop, for display
  landmarks: np.ndarray  # (68, 2) float32: landmarks in pixels of the input photo
  face_index: int = 0  # which of `faces` was used
  faces: Tuple[np.ndarray, ...] = ()  # boxes (x0, y0, x1, y1) of all faces found, largest first


def describe_faces(boxes: Sequence[np.ndarray]) -> str:
  """'2 faces found (largest first): #0 [x0,y0,x1,y1], #1 [...]' for error messages and logs."""
  listed = ', '.join(f'#{i} [{",".join(str(int(round(v))) for v in box)}]' for i, box in enumerate(boxes))
  return f'{len(boxes)} face{"s" if len(boxes) != 1 else ""} found (largest first): {listed}'


def parse_face_box(value: FaceBox, faces: Sequence[np.ndarray] = ()) -> np.ndarray:
  """'x0,y0,x1,y1' (or 4 numbers) -> float64 (4,) box; FaceSelectionError (listing `faces`) otherwise."""
  try:
    box = np.array([float(v) for v in (value.split(',') if isinstance(value, str) else value)], np.float64)
  except (TypeError, ValueError):
    box = np.zeros(0)
  if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
    raise FaceSelectionError(f'--face_box {value!r}: expected x0,y0,x1,y1 in pixels of the photo with x0 < x1 '
                             f'and y0 < y1; {describe_faces(faces)}')
  return box


def select_face(faces: Sequence[np.ndarray], face_index: Optional[int] = None,
                face_box: Optional[FaceBox] = None, name: str = 'source photo') -> int:
  """Index in `faces` (boxes, largest first) of the face to animate: `face_index` (default 0, the largest)
  or the face whose box overlaps `face_box` the most (intersection over union).

  Raises:
    FaceSelectionError: both given, an index out of range, a malformed box or one that overlaps no face.
  """
  if face_index is not None and face_box is not None:
    raise FaceSelectionError(f'{name}: give --face_index or --face_box, not both')
  if face_box is not None:
    box = parse_face_box(face_box, faces)
    overlaps = [detection.box_iou(box, f) for f in faces]
    if max(overlaps, default=0.0) <= 0:
      raise FaceSelectionError(f'{name}: --face_box {face_box!r} overlaps no detected face; '
                               f'{describe_faces(faces)}')
    return int(np.argmax(overlaps))
  index = 0 if face_index is None else face_index
  if not isinstance(index, (int, np.integer)) or not 0 <= index < len(faces):
    raise FaceSelectionError(f'{name}: --face_index {face_index!r} is out of range (0 to {len(faces) - 1}); '
                             f'{describe_faces(faces)}')
  return int(index)


def landmark_backend(name: str = 'auto', detector: str = 'hog') -> landmarks_lib.LandmarkBackend:
  """Landmark backend `name`; `detector` ('hog', 'cnn') is dlib's face detector (a non-default one means
  dlib, also for 'auto')."""
  if detector == 'hog':
    return landmarks_lib.get_landmark_backend(name)
  if name not in ('auto', 'dlib'):
    raise landmarks_lib.DetectorError(f'--detector {detector} is a dlib face detector; it does not apply to '
                                      f'--landmarks {name} (use --landmarks dlib)')
  return landmarks_lib.DlibBackend(detector=detector)


def open_driver(path: os.PathLike, max_frames: Optional[int] = None) -> Tuple[float, Optional[int]]:
  """(frames per second, frames to drive or None if unknown) of a driving video whose first frame decodes.

  Run it before any slow setup: a wrong path or an undecodable file fails at once (video.MediaError).
  """
  fps, total = video.probe_video(path)
  for _ in video.read_video(path, max_frames=1):
    pass
  if max_frames is not None:
    total = min(total or max_frames, max_frames)
  return fps, total


class FaceCoverage:
  """Counts the driving frames with and without a face and rejects drivers with too few faces.

  Frames without a face reuse the last pose, so a few are harmless; a video where no frame, or more than
  `max_faceless_fraction` of the frames, has a face would animate a still. `add` fails as soon as the limit
  is sure to be exceeded (when the number of frames, `total`, is known), `finish` at the end.

  Raises:
    OptionError: `max_faceless_fraction` outside [0, 1].
  """

  def __init__(self, name: str, max_faceless_fraction: float = DEFAULT_MAX_FACELESS_FRACTION,
               total: Optional[int] = None, detector: str = 'landmark'):
    if not 0 <= max_faceless_fraction <= 1:
      raise OptionError(f'--max_faceless_fraction {max_faceless_fraction}: expected a fraction in [0, 1]')
    self.name, self.max_fraction, self.total, self.detector = name, max_faceless_fraction, total, detector
    self.frames = self.faceless = 0

  def add(self, has_face: bool) -> None:
    self.frames += 1
    self.faceless += not has_face
    if self.total and self.faceless > self.max_fraction * self.total:
      raise DriverFaceError(f'{self.name}: {self.faceless} of its first {self.frames} frames have no face, more '
                            f'than --max_faceless_fraction {self.max_fraction} of its {self.total} frames; '
                            f'{self._advice()}')

  def finish(self) -> None:
    if self.frames and self.faceless == self.frames:
      raise DriverFaceError(f'{self.name}: no face found in any of its {self.frames} frames by the '
                            f'{self.detector} detector; {self._advice()}')
    if self.faceless > self.max_fraction * self.frames:
      raise DriverFaceError(f'{self.name}: {self.summary()}, more than --max_faceless_fraction '
                            f'{self.max_fraction}; {self._advice()}')

  def summary(self) -> str:
    return f'{self.faceless} of {self.frames} frames ({self.faceless / max(self.frames, 1):.0%}) without a face'

  @staticmethod
  def _advice() -> str:
    return 'use a video where one face stays visible (frames without a face reuse the last pose)'


def normalise_keypoints(landmarks_in_crop: np.ndarray, crop_size: int) -> np.ndarray:
  """(68, 2) pixel landmarks of a crop -> (136,) float32 in [-1, 1].

  The original loader's rule, docs/model.md#loading-and-normalisation.
  """
  return (np.asarray(landmarks_in_crop, np.float32)[:, :2] / np.float32(crop_size) * 2 - 1).reshape(-1)


class FacePreprocessor:
  """Detects, crops, and computes keypoints and masks of photos and driving frames.

  Args:
    image_size: the model's input size.
    landmarks: a backend name ('auto', 'dlib', 'face_alignment', registered) or a LandmarkBackend.
    segmentation: a backend name (bilayer_jax.face.segmentation) or a SegmentationBackend; built on first use.
    crop_size: size of the face crop before resizing to `image_size` (the dataset's stored size).
    detector: dlib's face detector for a backend given by name ('hog', or 'cnn': see `landmark_backend`).
    crop_style: the training dataset's crop rule: 'original' (from the 68 landmarks) or 'latentpose' (from
      the face detector's box: `driver_crops` then runs no landmark detector).
  """

  def __init__(self, image_size: int, landmarks: Union[str, landmarks_lib.LandmarkBackend] = 'auto',
               segmentation: Union[str, segmentation_lib.SegmentationBackend] = 'mediapipe_selfie',
               crop_size: int = 256, detector: str = 'hog', crop_style: str = 'original'):
    if crop_style not in crop_lib.CROP_STYLES:
      raise OptionError(f'crop style {crop_style!r}: expected one of {", ".join(crop_lib.CROP_STYLES)}')
    self.image_size = image_size
    self.crop_size = crop_size
    self.crop_style = crop_style
    self._landmarks = landmarks
    self._segmentation = segmentation
    self._detector = detector

  @property
  def landmarks(self) -> landmarks_lib.LandmarkBackend:
    if isinstance(self._landmarks, str):
      self._landmarks = landmark_backend(self._landmarks, self._detector)
    return self._landmarks

  @property
  def segmentation(self) -> segmentation_lib.SegmentationBackend:
    if isinstance(self._segmentation, str):
      self._segmentation = segmentation_lib.get_segmentation_backend(self._segmentation)
    return self._segmentation

  def _crop(self, image: np.ndarray, lms: np.ndarray, box: Optional[np.ndarray] = None
            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model-size uint8 crop, (136,) keypoints, crop at crop_size) for an image and its landmarks. Style
    'latentpose' crops around `box` (the face detector's, in pixels of the image), or, without one, the box
    the detector finds as the official tool does.

    Raises:
      ValueError: degenerate landmarks or box, or (latentpose, no box given) no face found by the detector.
    """
    if self.crop_style != 'latentpose':
      big_crop, lms_in_crop = crop_lib.crop_face(image, lms, self.crop_size)
    elif box is None:
      cut = crop_lib.crop_latentpose_frame(image, self.crop_size, self.landmarks.detect_box, lms)
      if cut is None:
        raise ValueError('the face detector found no face')
      big_crop, lms_in_crop = cut
    else:
      small = crop_lib.limit_side(image)
      ratio = small.shape[1] / image.shape[1]
      big_crop, lms_in_crop = crop_lib.crop_latentpose(small, np.asarray(box) * ratio, self.crop_size,
                                                       landmarks=np.asarray(lms, np.float32)[:, :2] * ratio)
    crop = images.resize_bicubic(big_crop, self.image_size)  # unchanged when the sizes are equal
    return crop, normalise_keypoints(lms_in_crop, self.crop_size), big_crop

  def _box_crop(self, frame: np.ndarray) -> Optional[np.ndarray]:
    """The model-size uint8 latent-pose crop of a frame's largest face (its detector box only), or None."""
    try:
      cut = crop_lib.crop_latentpose_frame(images.to_rgb(np.asarray(frame)), self.crop_size,
                                           self.landmarks.detect_box)
    except ValueError:  # a degenerate box: no face
      return None
    return None if cut is None else images.resize_bicubic(cut[0], self.image_size)

  def source(self, photo: np.ndarray, name: str = 'source photo', face_index: Optional[int] = None,
             face_box: Optional[FaceBox] = None) -> SourceInputs:
    """Preprocesses the source photo (any size, uint8 RGB/RGBA/gray).

    Args:
      photo: the photo. name: how messages call it (its path).
      face_index: which face (0 = the largest, the default; `SourceInputs.faces` lists them).
      face_box: x0,y0,x1,y1 in pixels of the photo: the detected face overlapping it the most.

    Raises:
      NoFaceError: no face was detected (the message names `name`).
      FaceSelectionError: `face_index`/`face_box` name no detected face (the message lists them).
    """
    photo = images.to_rgb(np.asarray(photo))
    faces = self.landmarks.detect_faces(photo)
    if not faces:
      raise NoFaceError(f'{name}: no face found by the {self.landmarks.name} landmark detector '
                        f'(image {photo.shape[1]}x{photo.shape[0]}); use a photo with one clearly visible, '
                        'roughly frontal face')
    boxes = tuple(f.box for f in faces)
    index = select_face(boxes, face_index, face_box, name)
    lms = faces[index].landmarks
    crop, pose, big_crop = self._crop(photo, lms, faces[index].box)
    # Masks are computed on the crop at the stored size and quantised to 8 bits, as the dataset stores them.
    mask = np.round(np.clip(self.segmentation.segment(big_crop), 0, 1) * 255).astype(np.uint8)
    if self.crop_size != self.image_size:
      mask = images.resize_bicubic(mask[..., None], self.image_size)[..., 0]
    imgs = crop.astype(np.float32) / 255 * 2 - 1
    segs = mask.astype(np.float32)[..., None] / 255
    sticks = stickman.draw_stickmen(pose[None], self.image_size)
    return SourceInputs(imgs=imgs[None, None], segs=segs[None, None], stickmen=sticks[None],
                        poses=pose[None, None], crop=crop, landmarks=np.asarray(lms, np.float32)[:, :2],
                        face_index=index, faces=boxes)

  def driver_poses(self, frames: Iterable[np.ndarray], coverage: Optional[FaceCoverage] = None
                   ) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]]:
    """Yields (frame, keypoints (136,) or None, crop or None) for consecutive video frames.

    Uses the backend's video mode (tracking/batching). Frames without a face give None; callers reuse
    the last pose (see `Animator.drive`). With `coverage`, every frame is counted and checked there
    (DriverFaceError when too few have a face).
    """
    for frame, lms in self.landmarks.detect_video(images.to_rgb(np.asarray(f)) for f in frames):
      crop = pose = None
      if lms is not None:
        try:
          crop, pose, _ = self._crop(frame, lms)
        except ValueError:  # degenerate landmarks, or no or a degenerate box: treat as no face
          pass
      if coverage is not None:
        coverage.add(pose is not None)
      yield frame, pose, crop
    if coverage is not None:
      coverage.finish()

  def driver_crops(self, frames: Iterable[np.ndarray], coverage: Optional[FaceCoverage] = None
                   ) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """Yields (frame, model-size uint8 crop or None) for video frames, by the dataset's crop rule.

    'latentpose': the face detector alone per frame (no landmarks); 'original': `driver_poses`' crops.
    Frames without a face give None. `coverage` as in `driver_poses`.
    """
    if self.crop_style != 'latentpose':
      for frame, _, crop in self.driver_poses(frames, coverage):
        yield frame, crop
      return
    for frame in frames:
      crop = self._box_crop(frame)
      if coverage is not None:
        coverage.add(crop is not None)
      yield frame, crop
    if coverage is not None:
      coverage.finish()
