"""Pose-frame augmentations (bilayer_jax.data.pose_augment): each augmenter's defining property, the
SomeOf draw, the shared shift and the per-example contract inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from bilayer_jax.data import pose_augment as pa

S = 32


def _textured(size=S, seed=0):
  """uint8-range float32 image: smooth gradients plus mid-frequency texture, away from 0 and 255."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:size, :size] / size
  base = np.stack([60 + 120 * x, 60 + 120 * y, 120 + 40 * np.sin(6 * x + 4 * y)], -1)
  return tf.constant(np.round(base + rng.normal(0, 12, base.shape)).clip(20, 235).astype(np.float32))


def _example(frames=1, size=S):
  imgs = np.stack([_textured(size, i).numpy() for i in range(frames)]) / 127.5 - 1.
  segs = np.random.default_rng(9).uniform(0, 1, (frames, size, size, 1))
  return {'target_imgs': tf.constant(imgs, tf.float32), 'target_segs': tf.constant(segs, tf.float32)}


def _hf_energy(img):
  img = np.asarray(img, np.float64)
  lap = 4 * img[1:-1, 1:-1] - img[:-2, 1:-1] - img[2:, 1:-1] - img[1:-1, :-2] - img[1:-1, 2:]
  return float(np.mean(lap**2))


def _is_uint8_valued(img):
  img = np.asarray(img)
  return img.min() >= 0 and img.max() <= 255 and np.array_equal(img, np.round(img))


def _seed(i):
  return tf.constant([i, 12345], tf.int32)


def test_deterministic_per_seed_and_varies_across_seeds():
  ex = _example()
  first = pa.augment_pose_example(ex, _seed(3))
  again = pa.augment_pose_example(ex, _seed(3))
  for key in ('pose_imgs', 'target_imgs', 'target_segs'):
    np.testing.assert_array_equal(first[key], again[key])
  poses = [pa.augment_pose_example(ex, _seed(i))['pose_imgs'].numpy() for i in range(8)]
  assert len({p.tobytes() for p in poses}) >= 6


def test_output_contract():
  ex = _example(frames=2)
  for i in range(6):
    out = pa.augment_pose_example(ex, tf.constant([i, 1], tf.int64))
    assert out['pose_imgs'].shape == (1, S, S, 3) and out['pose_imgs'].dtype == tf.float32
    assert out['target_imgs'].shape == (2, S, S, 3) and out['target_segs'].shape == (2, S, S, 1)
    assert _is_uint8_valued(out['pose_imgs'].numpy() * 127.5 + 127.5)
    segs = out['target_segs'].numpy()
    assert segs.min() >= 0 and segs.max() <= 1


def test_all_off_is_identity():
  ex = _example()
  out = pa.augment_pose_example(ex, _seed(0), pixelwise=False, scale=False, shift=False)
  np.testing.assert_allclose(out['pose_imgs'], ex['target_imgs'][:1], atol=1e-6)
  assert out['target_imgs'] is ex['target_imgs'] and out['target_segs'] is ex['target_segs']


def test_some_of_draws_0_to_5_ops_in_random_order():
  counts = []
  for i in range(600):
    count, order = pa.sample_pixelwise_ops(_seed(i))
    assert sorted(order.numpy().tolist()) == list(range(len(pa.PIXELWISE_NAMES)))
    counts.append(int(count))
  freq = np.bincount(counts, minlength=6) / len(counts)
  assert len(freq) == 6 and freq.min() > 0.1 and freq.max() < 0.25  # uniform over 0..5


def test_some_of_with_no_ops_is_identity():
  img = _textured()
  seed = next(_seed(i) for i in range(100) if int(pa.sample_pixelwise_ops(tf.random.experimental.stateless_split(
      tf.cast(_seed(i), tf.int64), 2)[0])[0]) == 0)
  np.testing.assert_array_equal(pa.pixelwise_augment(img, tf.cast(seed, tf.int64)), img)


@pytest.mark.parametrize('index', range(len(pa.PIXELWISE_NAMES)))
def test_each_random_augmenter_keeps_uint8_contract(index):
  img = _textured()
  outs = [pa.apply_pixelwise_op(img, index, _seed(i)).numpy() for i in range(4)]
  for out in outs:
    assert out.shape == (S, S, 3) and _is_uint8_valued(out)
  np.testing.assert_array_equal(outs[0], pa.apply_pixelwise_op(img, index, _seed(0)))


def test_add_shifts_by_rounded_value_and_clips():
  img = _textured()
  np.testing.assert_array_equal(pa.add(img, 7.4), img.numpy() + 7)
  out = pa.add(img, tf.constant([-3., 4.6, 9.]))
  np.testing.assert_array_equal(out.numpy().mean((0, 1)) - img.numpy().mean((0, 1)), [-3, 5, 9])
  assert pa.add(tf.fill([2, 2, 3], 250.), 10.).numpy().max() == 255


def test_multiply_scales_with_truncation():
  img = _textured()
  np.testing.assert_array_equal(pa.multiply(img, 1.3), np.floor(np.minimum(img.numpy() * np.float32(1.3), 255)))
  assert abs(pa.multiply(img, 0.5).numpy().mean() / img.numpy().mean() - 0.5) < 0.01


def test_gaussian_blur_lowers_high_frequencies():
  img = _textured()
  blurred = pa.gaussian_blur(img, 0.8)
  assert _hf_energy(blurred) < 0.5 * _hf_energy(img)
  np.testing.assert_array_equal(pa.gaussian_blur(img, 0.0), img)
  np.testing.assert_array_equal(pa.gaussian_blur(tf.fill([8, 8, 3], 77.), 1.0), tf.fill([8, 8, 3], 77.))


def test_average_blur_box_and_even_anchor():
  img = _textured()
  np.testing.assert_array_equal(pa.average_blur(img, 1), img)
  padded = np.pad(img.numpy(), [(1, 1), (1, 1), (0, 0)], mode='reflect')
  box3 = sum(padded[dy:dy + S, dx:dx + S] for dy in range(3) for dx in range(3)) / 9
  np.testing.assert_allclose(pa.average_blur(img, 3), np.round(box3), atol=1)
  impulse = np.zeros((8, 8, 1), np.float32)
  impulse[3, 3] = 200.
  out = pa.average_blur(tf.constant(impulse), 2).numpy()[..., 0]
  assert set(zip(*np.nonzero(out))) == {(3, 3), (3, 4), (4, 3), (4, 4)}  # cv2 anchor: window (i-1, i)


def test_median_blur_exact_and_removes_salt():
  img = _textured()
  padded = np.pad(img.numpy(), [(1, 1), (1, 1), (0, 0)], mode='edge')
  windows = np.stack([padded[dy:dy + S, dx:dx + S] for dy in range(3) for dx in range(3)], -1)
  np.testing.assert_array_equal(pa.median_blur(img, 3), np.median(windows, -1))
  np.testing.assert_array_equal(pa.median_blur(img, 2), pa.median_blur(img, 3))  # even k -> k + 1
  np.testing.assert_array_equal(pa.median_blur(img, 1), img)
  flat = np.full((S, S, 3), 100., np.float32)
  salty = flat.copy()
  salty[::5, ::7] = 255.
  np.testing.assert_array_equal(pa.median_blur(tf.constant(salty), 3), flat)


def _correlate(img, kernel):
  padded = np.pad(img, [(1, 1), (1, 1), (0, 0)], mode='reflect')
  h, w = img.shape[:2]
  return sum(kernel[i, j] * padded[i:i + h, j:j + w] for i in range(3) for j in range(3))


def test_sharpen_emboss_edges_match_imgaug_kernels():
  img = _textured().numpy()
  ident = np.zeros((3, 3), np.float32)
  ident[1, 1] = 1
  s = 0.4
  cases = [
      (pa.sharpen(img, 0.6, 1.3), np.array([[-1, -1, -1], [-1, 9.3, -1], [-1, -1, -1]]), 0.6),
      (pa.emboss(img, 0.7, s), np.array([[-1 - s, -s, 0], [-s, 1, s], [0, s, 1 + s]]), 0.7),  # correlation
      (pa.edge_detect(img, 0.15), np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]]), 0.15),
  ]
  for out, effect, alpha in cases:
    expected = np.clip(np.round(_correlate(img, (1 - alpha) * ident + alpha * effect)), 0, 255)
    assert np.mean(np.abs(out.numpy() - expected)) < 0.02  # float32 summation order only
  assert _hf_energy(pa.sharpen(img, 1.0, 1.0)) > 2 * _hf_energy(img)
  np.testing.assert_array_equal(pa.sharpen(img, 0.0, 1.5), img)
  np.testing.assert_array_equal(pa.emboss(img, 0.0, 0.5), img)


def test_simplex_like_mask_and_blend():
  masks = [pa.simplex_like_mask(64, _seed(i)).numpy() for i in range(12)]
  for m in masks:
    assert m.shape == (64, 64, 1) and m.min() >= 0 and m.max() <= 1
  assert max(m.std() for m in masks) > 0.2  # blobby, not flat
  # Smooth: neighbouring pixels differ far less than the mask's spread.
  assert np.mean([np.abs(np.diff(m, axis=0)).mean() for m in masks]) < 0.1
  img = _textured()
  edges = pa.edge_detect(img, 0.15)
  np.testing.assert_array_equal(pa.alpha_blend(edges, img, tf.ones([S, S, 1])), edges)
  np.testing.assert_array_equal(pa.alpha_blend(edges, img, tf.zeros([S, S, 1])), img)


def test_additive_gaussian_noise_scale_and_channel_sharing():
  img = tf.fill([64, 64, 3], 128.)
  noisy = pa.additive_gaussian_noise(img, 10., _seed(1)).numpy()
  diff = noisy - 128
  assert 9 < diff.std() < 11 and abs(diff.mean()) < 1
  np.testing.assert_array_equal(diff[..., 0], diff[..., 2])  # per_channel=False
  np.testing.assert_array_equal(pa.additive_gaussian_noise(img, 0., _seed(1)), img)


def _saturation(img):
  img = np.asarray(img)
  hi, lo = img.max(-1), img.min(-1)
  return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1), 0)


def test_add_to_saturation():
  img = _textured()
  gray = tf.fill([4, 4, 3], 90.)
  np.testing.assert_array_equal(pa.add_to_saturation(gray, -20.), gray)
  assert np.abs(pa.add_to_saturation(img, 0.).numpy() - img.numpy()).max() <= 2  # uint8 HSV round trip
  assert _saturation(pa.add_to_saturation(img, 20.)).mean() > _saturation(img).mean() + 0.05
  assert _saturation(pa.add_to_saturation(img, -20.)).mean() < _saturation(img).mean() - 0.05


def _psnr(a, b):
  return 10 * np.log10(255.**2 / np.mean((np.asarray(a) - np.asarray(b))**2))


def test_jpeg_compression_strength_maps_to_low_quality():
  # imgaug's JpegCompression((70, 99)) is compression strength: PIL quality 31 down to 3.
  qualities = pa.jpeg_quality(tf.constant([70., 70.9, 98., 99.])).numpy()
  np.testing.assert_array_equal(qualities, [31, 31, 4, 3])
  img = _textured(64)
  q31, q4 = pa.jpeg(img, 31), pa.jpeg(img, 4)
  assert not np.array_equal(q31, img) and _psnr(q31, img) > 25
  assert _psnr(q4, img) < _psnr(q31, img)
  assert _psnr(pa.jpeg(img, 95), img) > _psnr(q31, img)


def test_contrast_formulas():
  img = _textured()
  np.testing.assert_array_equal(pa.linear_contrast(img, 1.0), img)
  x = img.numpy()
  np.testing.assert_array_equal(pa.linear_contrast(img, 1.25), np.floor(np.clip(127 + 1.25 * (x - 127), 0, 255)))
  assert pa.linear_contrast(img, 1.25).numpy().std() > x.std()
  expected = np.floor(np.clip(255 / (1 + np.exp(7 * (0.5 - x / 255))), 0, 255))
  assert np.abs(pa.sigmoid_contrast(img, 7.).numpy() - expected).max() <= 1
  ramp = tf.reshape(tf.range(256, dtype=tf.float32), [16, 16, 1])
  assert np.all(np.diff(pa.sigmoid_contrast(ramp, 11.).numpy().ravel()) >= 0)


def test_elastic_keeps_shape_and_range():
  img = _textured()
  zero = tf.zeros([S, S])
  np.testing.assert_array_equal(pa.elastic(img, zero, zero), img)
  ones = tf.ones([S, S])
  np.testing.assert_array_equal(pa.elastic(img, ones, zero)[:, 1:], img[:, :-1])  # out(x) = in(x - dx)
  field = 3.5 * tf.random.stateless_uniform([2, S, S], _seed(2), -1., 1.)
  out = pa.elastic(img, field[0], field[1]).numpy()
  assert out.shape == img.shape and _is_uint8_valued(out) and not np.array_equal(out, img)
  assert abs(out[4:-4, 4:-4].mean() - img.numpy()[4:-4, 4:-4].mean()) < 3


def test_affine_translate_and_scale():
  img = _textured().numpy()
  moved = pa.affine(img, [1., 1.], [3., -2.]).numpy()  # content moves right 3, up 2
  padded = np.pad(img, [(4, 4), (4, 4), (0, 0)], mode='reflect')  # REFLECT_101
  np.testing.assert_allclose(moved, padded[6:6 + S, 1:1 + S], atol=1e-4)
  np.testing.assert_allclose(pa.affine(img, [1., 1.], [0., 0.]), img, atol=1e-4)
  zeros_fill = pa.affine(np.ones((S, S, 1), np.float32), [1., 1.], [3., 0.], order=3, mode='constant').numpy()
  assert np.all(zeros_fill[:, :3] == 0) and np.allclose(zeros_fill[:, 4:], 1)
  dot = np.zeros((9, 9, 1), np.float32)
  dot[4, 6] = 1.  # 2 px right of the centre pixel (4, 4)
  zoomed = pa.affine(dot, [1.5, 1.], [0., 0.]).numpy()[..., 0]
  np.testing.assert_allclose(zoomed[4, 5:], [0, 1 / 3, 1, 1 / 3], atol=1e-5)  # bilinear tent around x = 7


def _centroid(weights):
  w = np.asarray(weights, np.float64)
  y, x = np.mgrid[:w.shape[0], :w.shape[1]]
  return np.array([(w * y).sum(), (w * x).sum()]) / w.sum()


def test_shift_moves_pose_target_and_mask_together():
  img = np.full((1, S, S, 3), -1., np.float32)
  img[0, 10:20, 12:18] = 1.
  seg = (img[..., :1] > 0).astype(np.float32)
  ex = {'target_imgs': tf.constant(img), 'target_segs': tf.constant(seg)}
  fired = 0
  for i in range(12):
    out = pa.augment_pose_example(ex, _seed(i), pixelwise=False, scale=False)
    np.testing.assert_array_equal(out['pose_imgs'], out['target_imgs'])  # same frame, same shift
    if not np.array_equal(out['target_imgs'], img):
      fired += 1
      shift_img = _centroid(out['target_imgs'][0, ..., 0] + 1) - _centroid(img[0, ..., 0] + 1)
      shift_seg = _centroid(out['target_segs'][0, ..., 0]) - _centroid(seg[0, ..., 0])
      assert np.abs(shift_img).max() <= 0.05 * S + 0.5 and np.abs(shift_img).max() > 0.05
      np.testing.assert_allclose(shift_seg, shift_img, atol=0.1)
  assert 2 <= fired <= 10


def test_scale_changes_only_the_pose_frame():
  ex = _example()
  changed = 0
  for i in range(10):
    out = pa.augment_pose_example(ex, _seed(i), pixelwise=False, shift=False)
    assert out['target_imgs'] is ex['target_imgs'] and out['target_segs'] is ex['target_segs']
    changed += not np.allclose(out['pose_imgs'], ex['target_imgs'], atol=1e-6)
  assert 2 <= changed <= 9


def test_inside_tf_data_map():
  ex = _example(frames=2)
  seeds = tf.data.Dataset.range(3).map(lambda i: tf.stack([i, tf.constant(5, tf.int64)]))
  ds = tf.data.Dataset.zip(tf.data.Dataset.from_tensors(ex).repeat(3), seeds)
  ds = ds.map(pa.augment_pose_example)
  assert ds.element_spec['pose_imgs'].shape == (1, S, S, 3)
  assert ds.element_spec['target_imgs'].shape == (2, S, S, 3)
  runs = [list(ds.as_numpy_iterator()) for _ in range(2)]
  for i, (out, again) in enumerate(zip(*runs)):
    np.testing.assert_array_equal(out['pose_imgs'], again['pose_imgs'])
    # Graph rewrites may flip a rounding tie against eager mode: at most a few 1-LSB pixels.
    eager = pa.augment_pose_example(ex, tf.constant([i, 5], tf.int64))['pose_imgs'].numpy()
    diff = np.abs(out['pose_imgs'] - eager) * 127.5
    assert diff.max() < 1.01 and np.mean(diff > 0.5) < 1e-3
