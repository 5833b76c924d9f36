"""Landmark and segmentation backends, the face crop, and model fetching."""

import hashlib
import sys
import types
import zipfile

import numpy as np
import pytest
from skimage import data as skdata

from bilayer_jax.face import crop
from bilayer_jax.face import landmarks
from bilayer_jax.face import model_files
from bilayer_jax.face import segmentation
from data_prep import fetch_models


@pytest.fixture(scope='module')
def astronaut():
  return skdata.astronaut()  # 512x512 RGB, one face


@pytest.fixture(scope='module')
def dlib_backend():
  return landmarks.DlibBackend()


# ---------------------------------------------------------------- crop rule


def coordinate_image(h, w):
  """uint8 image whose pixel (y, x) stores (x, y, 255) for exact checks."""
  yy, xx = np.mgrid[:h, :w]
  return np.stack([xx, yy, np.full_like(xx, 255)], -1).astype(np.uint8)


def test_crop_box_rule():
  pts = np.full((68, 2), 30, np.float32)
  pts[0], pts[1] = (10, 20), (41, 80)  # extent 31 x 60; centre (25.5, 50)
  cx, cy, side = crop.crop_box(pts)
  # round half to even: 25.5 -> 26; side = int(60) = 60; cy = 50 - 60 // 6.
  assert (cx, cy, side) == (26, 40, 60)


def test_crop_face_pixels_and_padding():
  image = coordinate_image(200, 240)
  pts = np.zeros((68, 2), np.float32)
  pts[:, 0] = np.linspace(20, 50, 68)
  pts[:, 1] = np.linspace(30, 60, 68)  # side 30, centre (35, 45 - 5)
  out, kps = crop.crop_face(image, pts, 60)  # 2 * side: no resampling
  cx, cy, side = crop.crop_box(pts)
  assert (cx, cy, side) == (35, 40, 30)
  for y, x in [(0, 0), (10, 59), (59, 30), (33, 17)]:
    sx, sy = cx - side + x, cy - side + y
    expect = image[sy, sx] if 0 <= sx < 240 and 0 <= sy < 200 else 0
    np.testing.assert_array_equal(out[y, x], expect)
  np.testing.assert_allclose(kps, pts - [cx - side, cy - side], atol=1e-5)


def test_crop_face_outside_image_is_black_and_resized():
  image = np.full((50, 50, 3), 200, np.uint8)
  pts = np.stack([np.linspace(0, 40, 68), np.linspace(0, 40, 68)], -1)
  out, kps = crop.crop_face(image, pts, 32)
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  assert out[0, 0].max() == 0  # above/left of the image: zero padding
  cx, cy, side = crop.crop_box(pts)
  np.testing.assert_allclose(
      kps, (pts - [cx - side, cy - side]) * 32 / (2 * side), rtol=1e-5)


def test_crop_face_grayscale_and_degenerate():
  gray = coordinate_image(100, 100)[..., 0]
  pts = np.stack([np.linspace(30, 60, 68)] * 2, -1)
  out, _ = crop.crop_face(gray, pts, 16)
  assert out.shape == (16, 16, 3)
  with pytest.raises(ValueError, match='degenerate'):
    crop.crop_face(gray, np.full((68, 2), 5.0), 16)


# ---------------------------------------------------------------- landmarks


def test_dlib_finds_the_face(astronaut, dlib_backend):
  lms = dlib_backend.detect(astronaut)
  assert lms.shape == (68, 2) and lms.dtype == np.float32
  # The face of the astronaut is around x 170-260, y 80-220.
  assert 150 < lms[:, 0].mean() < 280 and 80 < lms[:, 1].mean() < 220
  eye_r, eye_l = lms[36:42].mean(0), lms[42:48].mean(0)
  assert eye_r[0] < eye_l[0]  # iBUG order: subject's right eye first
  gray = dlib_backend.detect(astronaut.mean(-1).astype(np.uint8))
  assert np.abs(gray - lms).mean() < 3


def test_dlib_no_face(dlib_backend):
  assert dlib_backend.detect(np.full((120, 160, 3), 127, np.uint8)) is None


def test_dlib_tracking_matches_detection(astronaut, dlib_backend):
  frames = [np.roll(astronaut, 3 * i, axis=1) for i in range(10)]
  tracked = [l for _, l in dlib_backend.detect_video(frames)]
  for i, (frame, lms) in enumerate(zip(frames, tracked)):
    ref = dlib_backend.detect(frame)
    iod = np.linalg.norm(ref[36:42].mean(0) - ref[42:48].mean(0))
    assert np.abs(lms - ref).mean() / iod < 0.05, i


class FakeDetector:

  def detect_from_batch(self, batch):
    return [[np.array([0, 0, 10, 10, .9]), np.array([0, 0, 40, 30, .9])]
            if float(b.float().mean()) > 0 else [] for b in batch]

  def detect_from_image(self, image):
    return [np.array([0, 0, 10, 10, .9]), np.array([0, 0, 40, 30, .9])] if image.mean() > 0 else []


class FakeFaceAlignment:
  """Stands in for face_alignment.FaceAlignment (no weights here)."""

  face_detector = FakeDetector()

  def get_landmarks_from_image(self, image, return_bboxes=False):
    boxes = [np.array([0, 0, 10, 10, .9]), np.array([0, 0, 40, 30, .9])]
    lms = [np.full((68, 2), 1.0), np.full((68, 2), 2.0)]
    return lms, None, boxes

  def get_landmarks_from_batch(self, batch, detected_faces=None):
    return [np.full((68 * len(f), 2), f[0][2] / 20.0) if f else []
            for f in detected_faces]


def test_face_alignment_backend_with_injected_model():
  backend = landmarks.FaceAlignmentBackend(device='cpu',
                                           fa=FakeFaceAlignment())
  lms = backend.detect(np.zeros((8, 8, 3), np.uint8))
  np.testing.assert_array_equal(lms, np.full((68, 2), 2.0))  # larger box
  batched = landmarks.FaceAlignmentBackend(device='cpu', batch_size=3,
                                           fa=FakeFaceAlignment())
  frames = [np.full((8, 8, 3), v, np.uint8) for v in (1, 0, 1, 1, 1)]
  out = list(batched.detect_video(frames))
  assert [f is fr for (f, _), fr in zip(out, frames)] == [True] * 5
  assert out[1][1] is None
  for i in (0, 2, 3, 4):
    np.testing.assert_array_equal(out[i][1], np.full((68, 2), 2.0))


def test_face_boxes_without_landmarks(dlib_backend, astronaut):
  """detect_box: the detector alone (the latent-pose crop's per-frame input), the largest face or None."""
  box = dlib_backend.detect_box(astronaut)
  np.testing.assert_allclose(box, dlib_backend.detect_faces(astronaut)[0].box, atol=8)
  assert dlib_backend.detect_box(np.zeros((64, 64, 3), np.uint8)) is None
  fa = landmarks.FaceAlignmentBackend(device='cpu', fa=FakeFaceAlignment())
  np.testing.assert_array_equal(fa.detect_box(np.ones((8, 8, 3), np.uint8)), [0, 0, 40, 30])
  assert fa.detect_box(np.zeros((8, 8, 3), np.uint8)) is None


def test_face_alignment_without_weights_is_a_clear_error(tmp_path,
                                                         monkeypatch):
  monkeypatch.setenv('TORCH_HOME', str(tmp_path))
  with pytest.raises(landmarks.BackendUnavailableError, match='dlib'):
    landmarks.FaceAlignmentBackend(device='cpu')
  backend = landmarks.get_landmark_backend('auto')
  assert backend.name == 'dlib'


def test_unknown_landmark_backend():
  with pytest.raises(ValueError, match='unknown landmark backend'):
    landmarks.get_landmark_backend('nope')


# ------------------------------------------------------------- segmentation


@pytest.fixture(scope='module')
def face_crop(astronaut, dlib_backend):
  out, _ = crop.crop_face(astronaut, dlib_backend.detect(astronaut), 256)
  return out


def test_mediapipe_selfie_segments_the_person(face_crop):
  seg = segmentation.get_segmentation_backend('mediapipe_selfie')
  mask = seg.segment(face_crop)
  assert mask.shape == (256, 256) and mask.dtype == np.float32
  assert 0 <= mask.min() and mask.max() <= 1
  assert mask[110:170, 100:160].mean() > 0.9  # the face
  small = seg.segment(face_crop[::4, ::4])  # any size: resized in and out
  assert small.shape == (64, 64)
  assert seg.info()['sha256'] == model_files.MODELS[
      'selfie_segmentation'].sha256


def test_erosion_and_user_tflite(face_crop):
  path = str(model_files.model_path('selfie_segmentation'))
  plain = segmentation.get_segmentation_backend(f'tflite:{path}')
  eroded = segmentation.get_segmentation_backend(f'tflite:{path}', erode=5)
  a, b = plain.segment(face_crop), eroded.segment(face_crop)
  assert (b <= a + 1e-6).all() and b.mean() < a.mean()


def test_python_hook_and_registration(face_crop):
  module = types.ModuleType('user_seg_module')

  class Ones(segmentation.SegmentationBackend):

    def __init__(self, value=1.0):
      self.value = value

    def segment(self, crop_image):
      return np.full(crop_image.shape[:2], self.value, np.float32)

  module.Ones = Ones
  sys.modules['user_seg_module'] = module
  hook = segmentation.get_segmentation_backend('user_seg_module:Ones',
                                               value=0.5)
  assert hook.segment(face_crop).mean() == 0.5
  segmentation.register_segmentation_backend('ones', Ones)
  assert segmentation.get_segmentation_backend('ones').segment(
      face_crop).mean() == 1.0


def test_missing_model_names_the_fetch_command(tmp_path):
  with pytest.raises(model_files.ModelNotFoundError,
                     match='python -m data_prep.fetch_models'):
    segmentation.MediapipeSelfieSegmentation(model_dir=str(tmp_path))
  (tmp_path / 'selfie_segmentation.tflite').write_bytes(b'corrupt')
  with pytest.raises(model_files.ModelNotFoundError, match='checksum'):
    model_files.model_path('selfie_segmentation', tmp_path)


def test_fetch_from_a_local_wheel(tmp_path):
  """The offline path of fetch_models: extract and verify from a wheel."""
  spec = model_files.MODELS['selfie_segmentation']
  model = model_files.model_path('selfie_segmentation').read_bytes()
  wheel = tmp_path / 'mediapipe-0.10.21-py3-none-any.whl'
  with zipfile.ZipFile(wheel, 'w') as zf:
    zf.writestr(spec.member, model)
  out = fetch_models.fetch('selfie_segmentation', tmp_path / 'models', wheel)
  assert hashlib.sha256(out.read_bytes()).hexdigest() == spec.sha256
  bad = tmp_path / 'bad.whl'
  with zipfile.ZipFile(bad, 'w') as zf:
    zf.writestr(spec.member, b'tampered')
  with pytest.raises(RuntimeError, match='checksum'):
    fetch_models.extract('selfie_segmentation', bad, tmp_path / 'other')
  assert not (tmp_path / 'other').exists()  # verified before anything is written
