"""Photo/frame preprocessing for inference: the same detection, crop, keypoint and mask rules as the
training data (data_prep), so the model sees at inference what it saw in training.

Per image: the largest face's 68 landmarks (data_prep.landmarks backends), the original's inference crop
(data_prep.crop: square of 2x the landmark extent, centre moved up by 1/6) cut at `crop_size` pixels
(the datasets' stored size, 256 by default) and resized with PIL bicubic to the model's image size, as
the input pipeline does; keypoints divided by the crop size and mapped to [-1, 1]; the person mask of
the segmentation backend, quantised to 8 bits like the stored PNG masks; the stickman drawn from the
keypoints. Driving frames are cropped around their own face (as the original's infer.py does), so
only their keypoints are needed.
"""

import dataclasses
from typing import Iterable, Iterator, Optional, Tuple, Union

import numpy as np

from bilayer_jax.data import stickman
from data_prep import crop as crop_lib
from data_prep import images
from data_prep import landmarks as landmarks_lib
from data_prep import segmentation as segmentation_lib


class NoFaceError(ValueError):
  """No face was found where one is required (the source photo)."""


@dataclasses.dataclass
class SourceInputs:
  """One preprocessed source photo, model-ready (NHWC, leading (1, 1) = (batch, frames))."""
  imgs: np.ndarray  # (1, 1, S, S, 3) float32 in [-1, 1]
  segs: np.ndarray  # (1, 1, S, S, 1) float32 in [0, 1]
  stickmen: np.ndarray  # (1, 1, S, S, 3) float32 in [-1, 1]
  poses: np.ndarray  # (1, 1, 136) float32 in [-1, 1]
  crop: np.ndarray  # (S, S, 3) uint8 RGB: the face crop, for display
  landmarks: np.ndarray  # (68, 2) float32: landmarks in pixels of the input photo


def normalise_keypoints(landmarks_in_crop: np.ndarray, crop_size: int) -> np.ndarray:
  """(68, 2) pixel landmarks of a crop -> (136,) float32 in [-1, 1] (the loader's rule, spec §8.2)."""
  return (np.asarray(landmarks_in_crop, np.float32)[:, :2] / np.float32(crop_size) * 2 - 1).reshape(-1)


class FacePreprocessor:
  """Detects, crops, and computes keypoints and masks of photos and driving frames.

  Args:
    image_size: the model's input size.
    landmarks: a backend name ('auto', 'dlib', 'face_alignment', registered) or a LandmarkBackend.
    segmentation: a backend name (data_prep.segmentation) or a SegmentationBackend; built on first use.
    crop_size: size of the face crop before resizing to `image_size` (the dataset's stored size).
  """

  def __init__(self, image_size: int, landmarks: Union[str, landmarks_lib.LandmarkBackend] = 'auto',
               segmentation: Union[str, segmentation_lib.SegmentationBackend] = 'mediapipe_selfie',
               crop_size: int = 256):
    self.image_size = image_size
    self.crop_size = crop_size
    self._landmarks = landmarks
    self._segmentation = segmentation

  @property
  def landmarks(self) -> landmarks_lib.LandmarkBackend:
    if isinstance(self._landmarks, str):
      self._landmarks = landmarks_lib.get_landmark_backend(self._landmarks)
    return self._landmarks

  @property
  def segmentation(self) -> segmentation_lib.SegmentationBackend:
    if isinstance(self._segmentation, str):
      self._segmentation = segmentation_lib.get_segmentation_backend(self._segmentation)
    return self._segmentation

  def _crop(self, image: np.ndarray, lms: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model-size uint8 crop, (136,) keypoints, crop at crop_size) for an image and its landmarks."""
    big_crop, lms_in_crop = crop_lib.crop_face(image, lms, self.crop_size)
    crop = images.resize_bicubic(big_crop, self.image_size)  # unchanged when the sizes are equal
    return crop, normalise_keypoints(lms_in_crop, self.crop_size), big_crop

  def source(self, photo: np.ndarray, name: str = 'source photo') -> SourceInputs:
    """Preprocesses the source photo (any size, uint8 RGB/RGBA/gray).

    Raises:
      NoFaceError: no face was detected (the message names `name`).
    """
    photo = images.to_rgb(np.asarray(photo))
    lms = self.landmarks.detect(photo)
    if lms is None:
      raise NoFaceError(f'{name}: no face found by the {self.landmarks.name} landmark detector '
                        f'(image {photo.shape[1]}x{photo.shape[0]}); use a photo with one clearly visible, '
                        'roughly frontal face')
    crop, pose, big_crop = self._crop(photo, lms)
    # Masks are computed on the crop at the stored size and quantised to 8 bits, as the dataset stores them.
    mask = np.round(np.clip(self.segmentation.segment(big_crop), 0, 1) * 255).astype(np.uint8)
    if self.crop_size != self.image_size:
      mask = images.resize_bicubic(mask[..., None], self.image_size)[..., 0]
    imgs = crop.astype(np.float32) / 255 * 2 - 1
    segs = mask.astype(np.float32)[..., None] / 255
    sticks = stickman.draw_stickmen(pose[None], self.image_size)
    return SourceInputs(imgs=imgs[None, None], segs=segs[None, None], stickmen=sticks[None],
                        poses=pose[None, None], crop=crop, landmarks=np.asarray(lms, np.float32)[:, :2])

  def driver_poses(self, frames: Iterable[np.ndarray]
                   ) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]]:
    """Yields (frame, keypoints (136,) or None, crop or None) for consecutive video frames.

    Uses the backend's video mode (tracking/batching). Frames without a face give None; callers reuse
    the last pose (see `Animator.drive`).
    """
    for frame, lms in self.landmarks.detect_video(images.to_rgb(np.asarray(f)) for f in frames):
      if lms is None:
        yield frame, None, None
        continue
      try:
        crop, pose, _ = self._crop(frame, lms)
      except ValueError:  # degenerate landmarks: treat as no face
        yield frame, None, None
        continue
      yield frame, pose, crop
