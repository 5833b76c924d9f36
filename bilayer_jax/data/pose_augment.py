"""Pose-frame augmentations of latent-pose-reenactment, as tf.data ops.

The official code (Burkov et al. 2020, ``dataloaders/common/augmentation.py``,
imgaug 0.4.0) augments only the pose encoder's copy of the target frame, so
the pose vector cannot carry the target's appearance. Per example:

1. ``Sequential(random_order=True)`` of two stages, pose frame only:
   * pixelwise: ``SomeOf((0, 5), random_order=True)`` of the 11 augmenters
     in ``_PIXELWISE`` (count uniform in 0..5, a uniformly random ordered
     subset; parameters below, as imgaug 0.4.0 samples and applies them);
   * scale: with p 0.5, ``Affine`` scale x and y independently in 0.8..1.2
     about the image centre, bilinear, ``reflect`` (OpenCV REFLECT_101).
2. Shift: with p 0.5, ``Affine`` translate x and y by U(-5 %, 5 %) of the
   size (sub-pixel), one draw shared by the pose frame and the target frame
   (bilinear, REFLECT_101, as images) and its mask (a heatmap in imgaug:
   bicubic, zero fill, clipped to [0, 1]).

imgaug works on uint8 and each augmenter rounds (LUT-based ones truncate) and
clips, so every function here takes and returns float32 (H, W, C) images
holding integers in [0, 255] and quantises as its imgaug counterpart does.
Differences from the official code:
* The simplex-noise alpha mask behind EdgeDetect is approximated: its
  low-resolution lattice values are i.i.d. N(0, 0.35) (OpenSimplex lattice
  values measured: std 0.35, neighbour correlation below 0.15) instead of
  OpenSimplex noise; the rest (size 2..16, uint8 quantisation, upscaling
  nearest/linear/cubic with p .05/.6/.35, max over 1..3 draws, sigmoid with
  threshold N(0, 5)) follows imgaug.
* The [-1, 1] input is rounded to uint8 (the official truncates
  ``x * 255``, which can drop an LSB), OpenCV's fixed-point interpolation
  and HSV tables are computed in float and rounded once.
* All T target frames (the official has one) share the shift.

Everything is stateless given a shape-(2,) seed, graph-mode safe and keeps
static shapes, for ``tf.data.Dataset.map``.
"""

import functools

import tensorflow as tf

MAX_PIXELWISE_OPS = 5  # SomeOf((0, 5), ...)
JPEG_COMPRESSION_RANGE = (70., 99.)  # imgaug *compression*, not quality


def _split(seed, num):
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _uniform(seed, low, high, shape=()):
  return tf.random.stateless_uniform(shape, seed, low, high)


def _randint(seed, low, high):
  """Scalar int32 uniform in [low, high] (both inclusive)."""
  return tf.random.stateless_uniform([], seed, low, high + 1, dtype=tf.int32)


def _coin(seed, p=0.5):
  return _uniform(seed, 0., 1.) < p


def _round_clip(x):
  return tf.clip_by_value(tf.round(x), 0., 255.)


def _floor_clip(x):
  # imgaug's uint8 look-up tables are built in float and cast (truncated).
  return tf.floor(tf.clip_by_value(x, 0., 255.))


def to_uint8_range(images):
  """[-1, 1] images -> float32 holding integers in [0, 255]."""
  return _round_clip((images + 1.) * 127.5)


# Neighbourhood filters (OpenCV's default border REFLECT_101 = tf 'REFLECT').


def _shifted_views(image, radius, mode='REFLECT'):
  """{(dy, dx): image shifted by (dy, dx)} for |dy|, |dx| <= radius."""
  h, w = image.shape[0], image.shape[1]
  pad = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode=mode)
  return {(dy, dx): pad[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
          for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)}


def _correlate3x3(image, kernel):
  """cv2.filter2D (correlation, not convolution) with a (3, 3) kernel."""
  views = _shifted_views(image, 1)
  return tf.add_n([kernel[dy + 1, dx + 1] * view for (dy, dx), view in views.items()])


def _blend_kernel(alpha, effect):
  identity = tf.constant([[0., 0., 0.], [0., 1., 0.], [0., 0., 0.]])
  return (1. - alpha) * identity + alpha * effect


def gaussian_blur(image, sigma):
  """GaussianBlur: 5x5 kernel (imgaug's minimum ksize, enough for sigma <= 1)."""
  taps = tf.range(-2., 3.)
  weights = tf.exp(-taps**2 / (2. * tf.maximum(sigma, 1e-3)**2))
  weights /= tf.reduce_sum(weights)
  h, w = image.shape[0], image.shape[1]
  pad = tf.pad(image, [[2, 2], [2, 2], [0, 0]], mode='REFLECT')
  rows = tf.add_n([weights[i] * pad[i:i + h] for i in range(5)])
  return _round_clip(tf.add_n([weights[i] * rows[:, i:i + w] for i in range(5)]))


def average_blur(image, k):
  """AverageBlur (cv2.blur) with a k x k box, k in {1, 2, 3}.

  cv2 anchors even boxes at k // 2, so k = 2 averages pixels (i - 1, i).
  """
  views = _shifted_views(image, 1)

  def box(offsets):
    mean = tf.add_n([views[(dy, dx)] for dy in offsets for dx in offsets])
    return _round_clip(mean / float(len(offsets)**2))

  return tf.switch_case(tf.convert_to_tensor(k, tf.int32) - 1, [lambda: image, lambda: box((-1, 0)),
                                lambda: box((-1, 0, 1))])


def _min3(a, b, c):
  return tf.minimum(tf.minimum(a, b), c)


def _max3(a, b, c):
  return tf.maximum(tf.maximum(a, b), c)


def _med3(a, b, c):
  return tf.maximum(tf.minimum(a, b), tf.minimum(tf.maximum(a, b), c))


def median_blur(image, k):
  """MedianBlur: imgaug bumps even k to k + 1, so k in {2, 3} is a 3x3 median.

  cv2.medianBlur replicates the border.
  """
  def median3x3():
    # Exact 3x3 median without sorting: sort each vertical triple, then the
    # median is med3(max of the lows, med3 of the mids, min of the highs).
    h, w = image.shape[0], image.shape[1]
    pad = tf.pad(image, [[1, 1], [1, 1], [0, 0]], mode='SYMMETRIC')  # = replicate for 1 px
    column = (pad[:h], pad[1:h + 1], pad[2:])
    low, mid, high = _min3(*column), _med3(*column), _max3(*column)
    row = lambda x: (x[:, :w], x[:, 1:w + 1], x[:, 2:])
    return _med3(_max3(*row(low)), _med3(*row(mid)), _min3(*row(high)))

  return tf.cond(k > 1, median3x3, lambda: image)


def sharpen(image, alpha, lightness):
  effect = tf.stack([[-1., -1., -1.], [-1., 8. + lightness, -1.], [-1., -1., -1.]])
  return _round_clip(_correlate3x3(image, _blend_kernel(alpha, effect)))


def emboss(image, alpha, strength):
  s = strength
  effect = tf.stack([[-1. - s, -s, 0.], [-s, 1., s], [0., s, 1. + s]])
  return _round_clip(_correlate3x3(image, _blend_kernel(alpha, effect)))


def edge_detect(image, alpha):
  effect = tf.constant([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]])
  return _round_clip(_correlate3x3(image, _blend_kernel(alpha, effect)))


def alpha_blend(foreground, background, mask):
  return _round_clip(background + mask * (foreground - background))


def simplex_like_mask(size, seed):
  """(size, size, 1) blobby mask in [0, 1]; see the module docstring."""
  s_iters, s_thresh, s_loop = _split(seed, 3)

  def draw(i):
    s_cells, s_values, s_method = _split(tf.random.experimental.stateless_fold_in(s_loop, i), 3)
    cells = _randint(s_cells, 2, 16)
    values = tf.random.stateless_normal([cells, cells, 1], s_values, stddev=0.35)
    # imgaug stores the low-res noise as uint8 before upscaling it.
    low = tf.floor(tf.clip_by_value((values + 1.) / 2., 0., 1.) * 255.)
    method = tf.searchsorted([0.05, 0.65], [_uniform(s_method, 0., 1.)], side='right')[0]
    resized = tf.switch_case(method, [
        functools.partial(tf.image.resize, low, [size, size], m) for m in ('nearest', 'bilinear', 'bicubic')])
    return _round_clip(tf.ensure_shape(resized, [size, size, 1])) / 255.

  iters = _randint(s_iters, 1, 3)
  noise = tf.while_loop(lambda i, _: i < iters, lambda i, acc: (i + 1, tf.maximum(acc, draw(i))),
                        (tf.constant(1), draw(0)))[1]
  threshold = tf.random.stateless_normal([], s_thresh, stddev=5.)
  return tf.sigmoid(noise * 20. - 10. - threshold)


def add(image, value):
  """Add: value (scalar, or one per channel) rounded first, as imgaug's LUT."""
  return tf.clip_by_value(image + tf.round(value), 0., 255.)


def additive_gaussian_noise(image, scale, seed):
  """AdditiveGaussianNoise, per_channel=False: one noise value per pixel."""
  noise = tf.random.stateless_normal([image.shape[0], image.shape[1], 1], seed, stddev=scale)
  return tf.clip_by_value(image + tf.round(noise), 0., 255.)


def multiply(image, factor):
  return _floor_clip(image * factor)


def add_to_saturation(image, value):
  """AddToSaturation through OpenCV's uint8 HSV (hue in 180 steps, S in 0..255)."""
  hsv = tf.image.rgb_to_hsv(image / 255.)
  hue = tf.math.floormod(tf.round(hsv[..., 0] * 180.), 180.) / 180.
  sat = tf.clip_by_value(tf.round(hsv[..., 1] * 255.) + value, 0., 255.) / 255.
  rgb = tf.image.hsv_to_rgb(tf.stack([hue, sat, hsv[..., 2]], -1))
  return _round_clip(rgb * 255.)


def jpeg_quality(compression):
  """imgaug's map from its compression strength (int-truncated) to PIL quality."""
  compression = tf.floor(compression)
  quality = tf.round(1. + 99. * (1. - compression / 101.))
  return tf.cast(tf.clip_by_value(quality, 1., 100.), tf.int32)


def jpeg(image, quality):
  """Real JPEG encode/decode; ISLOW IDCT like PIL (tf's default is IFAST)."""
  encoded = tf.raw_ops.EncodeJpegVariableQuality(images=tf.cast(image, tf.uint8), quality=quality)
  decoded = tf.io.decode_jpeg(encoded, channels=3, dct_method='INTEGER_ACCURATE')
  return tf.cast(tf.ensure_shape(decoded, image.shape), tf.float32)


def linear_contrast(image, alpha):
  # imgaug centres uint8 contrast at int(127.5).
  return _floor_clip(127. + alpha * (image - 127.))


def sigmoid_contrast(image, gain, cutoff=0.5):
  return _floor_clip(255. / (1. + tf.exp(gain * (cutoff - image / 255.))))


# Resampling. Source coordinates are in pixels (pixel centres at integers).


def _tap_weights(frac, order):
  """Interpolation weights of taps (-1..2 for cubic, 0..1 for linear)."""
  if order == 1:
    return (0, 1), [1. - frac, frac]
  a = -0.75  # OpenCV's INTER_CUBIC

  def near(t):  # |t| <= 1
    return ((a + 2.) * t - (a + 3.)) * t * t + 1.

  def far(t):  # 1 <= |t| <= 2
    return ((a * t - 5. * a) * t + 8. * a) * t - 4. * a

  return (-1, 0, 1, 2), [far(1. + frac), near(frac), near(1. - frac), far(2. - frac)]


def _tap_indices(index, n, mode):
  """Tap indices into [0, n) and their validity, for a border mode."""
  if mode == 'reflect':  # REFLECT_101: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
    period = 2 * n - 2
    index = tf.math.floormod(index, period)
    return tf.where(index >= n, period - index, index), None
  valid = (index >= 0) & (index < n)
  return tf.clip_by_value(index, 0, n - 1), tf.cast(valid, tf.float32)


def _resample_axis(image, coords, axis, order, mode):
  """Resamples (H, W, C) along axis 0 or 1 at 1-D source coordinates."""
  base = tf.floor(coords)
  offsets, weights = _tap_weights(coords - base, order)
  base = tf.cast(base, tf.int32)
  out = 0.
  for offset, weight in zip(offsets, weights):
    index, valid = _tap_indices(base + offset, image.shape[axis], mode)
    if valid is not None:
      weight *= valid
    shape = [-1, 1, 1] if axis == 0 else [1, -1, 1]
    out += tf.reshape(weight, shape) * tf.gather(image, index, axis=axis)
  return out


def affine(image, scale, translate, *, order=1, mode='reflect'):
  """imgaug Affine (scale about the centre, then translate by pixels).

  `scale`, `translate`: (x, y) pairs. `order` 1 (bilinear) or 3 (OpenCV
  bicubic); `mode` 'reflect' (REFLECT_101) or 'constant' (zero fill).
  Returns float32 without rounding (callers quantise as the data type needs).
  """
  h, w = image.shape[0], image.shape[1]
  # imgaug's centre is (size / 2 - 0.5); output x' = s (x - c) + t + c.
  src_y = (tf.range(h, dtype=tf.float32) - (h / 2. - 0.5) - translate[1]) / scale[1] + (h / 2. - 0.5)
  src_x = (tf.range(w, dtype=tf.float32) - (w / 2. - 0.5) - translate[0]) / scale[0] + (w / 2. - 0.5)
  out = _resample_axis(image, src_y, 0, order, mode)
  return _resample_axis(out, src_x, 1, order, mode)


def elastic(image, dx, dy):
  """ElasticTransformation remap: out(y, x) = in(y - dy, x - dx), bicubic, zero fill.

  dx, dy: (H, W) displacement fields.
  """
  h, w, c = image.shape
  grid_y, grid_x = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing='ij')
  src_x, src_y = grid_x - dx, grid_y - dy
  base_x, base_y = tf.floor(src_x), tf.floor(src_y)
  offsets, weights_x = _tap_weights(src_x - base_x, 3)
  _, weights_y = _tap_weights(src_y - base_y, 3)
  base_x, base_y = tf.cast(base_x, tf.int32), tf.cast(base_y, tf.int32)
  flat = tf.reshape(image, [h * w, c])
  out = 0.
  for oy, wy in zip(offsets, weights_y):
    iy, vy = _tap_indices(base_y + oy, h, 'constant')
    for ox, wx in zip(offsets, weights_x):
      ix, vx = _tap_indices(base_x + ox, w, 'constant')
      out += (wy * vy * wx * vx)[..., None] * tf.gather(flat, iy * w + ix)
  return _round_clip(out)


# The 11 random pixelwise augmenters of the official SomeOf, each (image, seed).


def _random_blur(image, seed):
  s_which, s_param = _split(seed, 2)
  return tf.switch_case(_randint(s_which, 0, 2), [
      lambda: gaussian_blur(image, _uniform(s_param, 0., 1.)),
      lambda: average_blur(image, _randint(s_param, 1, 3)),
      lambda: median_blur(image, _randint(s_param, 1, 3))])


def _random_sharpen(image, seed):
  s_alpha, s_light = _split(seed, 2)
  return sharpen(image, _uniform(s_alpha, 0., 1.), _uniform(s_light, 1., 1.5))


def _random_emboss(image, seed):
  s_alpha, s_strength = _split(seed, 2)
  return emboss(image, _uniform(s_alpha, 0., 1.), _uniform(s_strength, 0., 0.5))


def _random_edges(image, seed):
  s_alpha, s_mask = _split(seed, 2)
  edges = edge_detect(image, _uniform(s_alpha, 0., 0.15))
  return alpha_blend(edges, image, simplex_like_mask(image.shape[0], s_mask))


def _random_noise(image, seed):
  s_scale, s_noise = _split(seed, 2)
  return additive_gaussian_noise(image, _uniform(s_scale, 0., 0.05 * 255.), s_noise)


def _random_add(image, seed):
  s_value, s_per_channel = _split(seed, 2)
  values = _uniform(s_value, -10., 10., [image.shape[-1]])
  return add(image, tf.where(_coin(s_per_channel), values, values[0]))


def _random_saturation(image, seed):
  return add_to_saturation(image, tf.cast(_randint(seed, -20, 20), tf.float32))


def _random_jpeg(image, seed):
  return jpeg(image, jpeg_quality(_uniform(seed, *JPEG_COMPRESSION_RANGE)))


def _random_multiply(image, seed):
  return multiply(image, _uniform(seed, 0.5, 1.5))


def _random_contrast(image, seed):
  s_which, s_param = _split(seed, 2)
  return tf.cond(_coin(s_which), lambda: linear_contrast(image, _uniform(s_param, 0.75, 1.25)),
                 lambda: sigmoid_contrast(image, _uniform(s_param, 3., 11.)))


def _random_elastic(image, seed):
  """Sometimes(0.5, ElasticTransformation(alpha=(0.5, 3.5), sigma=0.15)).

  sigma 0.15 px smooths nothing (neighbour weight e^-22), so the displacement
  is i.i.d. per pixel: alpha * U(-1, 1), a jitter rather than a smooth warp.
  """
  s_fire, s_alpha, s_field = _split(seed, 3)

  def warp():
    field = _uniform(s_alpha, 0.5, 3.5) * _uniform(s_field, -1., 1., [2, image.shape[0], image.shape[1]])
    return elastic(image, field[0], field[1])

  return tf.cond(_coin(s_fire), warp, lambda: image)


_PIXELWISE = (_random_blur, _random_sharpen, _random_emboss, _random_edges, _random_noise, _random_add,
              _random_saturation, _random_jpeg, _random_multiply, _random_contrast, _random_elastic)
PIXELWISE_NAMES = tuple(fn.__name__[len('_random_'):] for fn in _PIXELWISE)


def sample_pixelwise_ops(seed):
  """SomeOf's draw: (count in 0..5, (11,) permutation; its first count entries apply in order)."""
  s_count, s_order = _split(seed, 2)
  order = tf.argsort(_uniform(s_order, 0., 1., [len(_PIXELWISE)]))
  return _randint(s_count, 0, MAX_PIXELWISE_OPS), tf.cast(order, tf.int32)


def apply_pixelwise_op(image, index, seed):
  """Applies augmenter `index` of PIXELWISE_NAMES with its random parameters."""
  branches = [functools.partial(fn, image, seed) for fn in _PIXELWISE]
  return tf.switch_case(tf.convert_to_tensor(index, tf.int32), branches)


def pixelwise_augment(image, seed):
  """The official SomeOf((0, 5), [...], random_order=True) on one uint8-range image."""
  s_ops, s_apply = _split(seed, 2)
  count, order = sample_pixelwise_ops(s_ops)

  def body(i, img):
    out = apply_pixelwise_op(img, order[i], tf.random.experimental.stateless_fold_in(s_apply, i))
    return i + 1, tf.ensure_shape(out, image.shape)

  return tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), image))[1]


def random_scale(image, seed):
  """Sometimes(0.5, Affine(scale x, y in 0.8..1.2, bilinear, reflect))."""
  s_fire, s_scale = _split(seed, 2)
  return tf.cond(_coin(s_fire), lambda: _round_clip(affine(image, _uniform(s_scale, 0.8, 1.2, [2]), [0., 0.])),
                 lambda: image)


def augment_pose_example(example, seed, *, pixelwise=True, scale=True, shift=True):
  """Adds 'pose_imgs' (1, S, S, 3): the augmented first target frame.

  example: 'target_imgs' (T, S, S, 3) in [-1, 1], 'target_segs' (T, S, S, 1)
  in [0, 1]. When the shift fires, all target frames and masks move with the
  pose frame (masks bicubic with zero fill, as imgaug's heatmaps). `seed`:
  shape (2,) int32/int64.
  """
  seed = tf.cast(seed, tf.int64)
  s_order, s_pixel, s_scale, s_shift = _split(seed, 4)
  imgs, segs = example['target_imgs'], example['target_segs']
  pose = to_uint8_range(imgs[0])
  # Sequential(random_order=True) over [SomeOf, scale].
  scale_first = _coin(s_order)
  if scale:
    pose = tf.cond(scale_first, lambda: random_scale(pose, s_scale), lambda: pose)
  if pixelwise:
    pose = pixelwise_augment(pose, s_pixel)
  if scale:
    pose = tf.cond(scale_first, lambda: pose, lambda: random_scale(pose, s_scale))
  out = dict(example)
  if shift:
    s_fire, s_amount = _split(s_shift, 2)
    size = tf.constant([imgs.shape[2], imgs.shape[1]], tf.float32)
    translate = _uniform(s_amount, -0.05, 0.05, [2]) * size
    t, channels = imgs.shape[0], imgs.shape[-1]
    # One resampling of pose and targets stacked along channels.
    frames = tf.concat([pose, tf.concat(tf.unstack(to_uint8_range(imgs)), -1)], -1)

    def shifted():
      moved = _round_clip(affine(frames, [1., 1.], translate))
      moved_imgs = tf.stack(tf.split(moved[..., channels:], t, axis=-1)) / 127.5 - 1.
      moved_segs = affine(tf.concat(tf.unstack(segs), -1), [1., 1.], translate, order=3, mode='constant')
      moved_segs = tf.stack(tf.split(tf.clip_by_value(moved_segs, 0., 1.), t, axis=-1))
      return moved[..., :channels], moved_imgs, moved_segs

    pose, out['target_imgs'], out['target_segs'] = tf.cond(_coin(s_fire), shifted, lambda: (pose, imgs, segs))
  out['pose_imgs'] = (pose / 127.5 - 1.)[None]
  return out
