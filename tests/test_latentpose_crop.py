"""The latent-pose crop (LPD's face-box rule) against the official cropper's own output on real images."""

import numpy as np
import pytest

from bilayer_jax.face import crop as crop_lib

FIXTURE = 'lpd_small/crop_latentpose.npz'


@pytest.fixture(scope='module')
def reference(fixtures_dir):
  with np.load(fixtures_dir.parent / FIXTURE) as data:
    return dict(data)


def test_crops_match_the_official_cropper(reference):
  images = [reference['image_0'], reference['image_1']]
  for size in reference['sizes']:
    for k, (index, box) in enumerate(zip(reference['box_images'], reference['boxes'])):
      ours, _ = crop_lib.crop_latentpose(images[index], box, int(size))
      theirs = reference[f'crops_{size}'][k]
      assert ours.shape == theirs.shape == (size, size, 3) and ours.dtype == np.uint8
      # Same OpenCV operations in the same order: equal up to a rounding step of the float blend.
      diff = np.abs(ours.astype(int) - theirs.astype(int))
      assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (size, k, diff.max(), (diff > 0).mean())


def test_box_geometry_and_landmarks_follow_the_crop():
  left, top, right, bottom = crop_lib.latentpose_box((10.2, 20.7, 60.4, 90.1))
  assert right - left == bottom - top  # exactly square
  # Side max(50.2, 69.4) * 1.8 = 124.92 around the centre (35.3, 55.4), both ends inclusive.
  assert (left, top) == (-28, -8) and right - left == 127  # floor(-27.16), floor(-7.06); ceil(97.76) + 1
  image = np.zeros((100, 80, 3), np.uint8)
  centre = np.array([[35.3, 55.4], [left, top]], np.float32)
  _, moved = crop_lib.crop_latentpose(image, (10.2, 20.7, 60.4, 90.1), 254, landmarks=centre)
  np.testing.assert_allclose(moved[1], [0, 0], atol=1e-5)
  np.testing.assert_allclose(moved[0], (centre[0] - [left, top]) * 2, rtol=1e-6)


def test_padding_is_soft_and_the_inside_untouched():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)
  inside, _ = crop_lib.crop_latentpose(image, (40, 40, 80, 80), 73)  # 73 px: the crop itself, no resize
  np.testing.assert_array_equal(inside, image[24:97, 24:97])
  edge, _ = crop_lib.crop_latentpose(image, (0, 40, 40, 80), 73)  # 16 px mirrored and blurred on the left
  assert edge[:, :8].std() < image.std() / 3  # deep in the padding: blurred and faded to the median colour
  np.testing.assert_array_equal(edge[:, 30:], image[24:97, 14:57])  # farther in than a third of the padding


def test_bad_boxes_and_large_inputs():
  image = np.zeros((50, 50, 3), np.uint8)
  for box in ((5, 5, 5, 30), (0, 0, np.nan, 10)):
    with pytest.raises(ValueError, match='degenerate face box'):
      crop_lib.crop_latentpose(image, box, 32)
  big = np.zeros((1500, 2304, 3), np.uint8)
  assert crop_lib.limit_side(big).shape == (750, 1152, 3)
  assert crop_lib.limit_side(image) is image


def test_the_whole_frame_step_detects_on_the_limited_frame():
  """crop_latentpose_frame: the detector sees the frame limited to 1152 px and the crop is cut from that;
  landmarks given in pixels of the full frame move with it; no box, no crop."""
  rng = np.random.default_rng(1)
  frame = rng.integers(0, 256, (1200, 2304, 3), dtype=np.uint8)
  seen = []
  detect = lambda image: seen.append(image.shape) or np.array([500.0, 200.0, 700.0, 420.0])
  crop, moved = crop_lib.crop_latentpose_frame(frame, 96, detect, landmarks=np.array([[1200.0, 620.0]] * 68))
  assert seen == [(600, 1152, 3)]
  expected, expected_lms = crop_lib.crop_latentpose(crop_lib.limit_side(frame), detect(frame), 96,
                                                    landmarks=np.array([[600.0, 310.0]] * 68))
  np.testing.assert_array_equal(crop, expected)
  np.testing.assert_allclose(moved, expected_lms, rtol=1e-6)
  assert crop_lib.crop_latentpose_frame(frame, 96, lambda image: None) is None
