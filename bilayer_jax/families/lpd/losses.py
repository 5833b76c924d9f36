"""The LPD official code's loss terms (docs/lpd.md#losses), NHWC, images in [0, 1].

* adversarial: hinge for the discriminator, −mean(fake score) for the generator;
* feature matching: weight · mean over the seven discriminator feature maps of L1(fake, real fixed);
* perceptual: weight · Σ over every ReLU up to relu5_1 of the Caffe VGG19 (average pooling) of L1;
* VGGFace: the same on VGG16-Face up to relu5_3, after cropping both images to the central 1/1.8 and
  resizing back (bilinear, as `grid_sample` samples);
* dis_embed: weight · L1(the first identity frame's vector, the video's projection vector fixed);
* dice: −log(2 Σ f r / (Σ f² + Σ r²)) over the whole batch. Reference quirk kept by default: its real mask
  has 3 identical channels against the predicted 1, so broadcasting triples Σ f r and Σ r²
  (`real_channels=3`; a perfect binary mask scores −log 1.5); `real_channels=1` is the plain dice.
"""

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.models import vgg

Array = jax.Array


def l1(a: Array, b: Array) -> Array:
  return jnp.mean(jnp.abs(a - b))


def hinge_discriminator(real_scores: Array, fake_scores: Array) -> Array:
  return jnp.mean(jax.nn.relu(1.0 - real_scores)) + jnp.mean(jax.nn.relu(1.0 + fake_scores))


def adversarial_generator(fake_scores: Array) -> Array:
  return -jnp.mean(fake_scores)


def feature_matching(fake_features: Sequence[Array], real_features: Sequence[Array], weight: float) -> Array:
  terms = [l1(f, jax.lax.stop_gradient(r)) for f, r in zip(fake_features, real_features)]
  return weight * sum(terms) / len(terms)


def center_crop_matrix(size: int, factor: float) -> np.ndarray:
  """(size, size) bilinear interpolation matrix that samples the central `factor` of an axis back at `size`
  points, as `affine_grid` + `grid_sample(align_corners=False)` place them (float64)."""
  out = np.arange(size, dtype=np.float64)
  source = ((factor * ((2 * out + 1) / size - 1) + 1) * size - 1) / 2  # source pixel coordinate
  if source.min() < 0 or source.max() > size - 1:
    raise ValueError(f'crop factor {factor}: samples outside the image (reflection padding not implemented)')
  low = np.floor(source).astype(int)
  high = np.minimum(low + 1, size - 1)
  frac = source - low
  matrix = np.zeros((size, size))
  matrix[np.arange(size), low] += 1 - frac
  matrix[np.arange(size), high] += frac
  return matrix


def center_crop_resize(images: Array, factor: float) -> Array:
  """The central `factor` of each (N, H, W, C) image resized back to H x W, bilinearly."""
  _, h, w, _ = images.shape
  rows = jnp.asarray(center_crop_matrix(h, factor), images.dtype)
  cols = jnp.asarray(center_crop_matrix(w, factor), images.dtype)
  return jnp.einsum('oh,nhwc,pw->nopc', rows, images, cols)


def perceptual(spec: vgg.VGGSpec, params: Mapping[str, Any], fake: Array, real: Array, weight: float) -> Array:
  """weight · Σ_l L1(VGG_l(fake), VGG_l(real) fixed) over the spec's layers."""
  net = vgg.VGGFeatures(spec)
  real_features = jax.lax.stop_gradient(net.apply(params, jax.lax.stop_gradient(real)))
  fake_features = net.apply(params, fake)
  return weight * sum(l1(f, r) for f, r in zip(fake_features, real_features))


def dis_embed(identity_first: Array, projection: Array, weight: float) -> Array:
  return weight * l1(identity_first, jax.lax.stop_gradient(projection))


def dice(fake_mask: Array, real_mask: Array, real_channels: int = 3) -> Array:
  """−log dice over the batch; masks (N, H, W, 1). `real_channels`: see the module docstring."""
  numerator = 2 * real_channels * jnp.sum(fake_mask * real_mask)
  denominator = jnp.sum(fake_mask ** 2) + real_channels * jnp.sum(real_mask ** 2)
  return -jnp.log(numerator / denominator)
