"""Full-reference image metrics in JAX: L1, PSNR and SSIM (the standard Gaussian-window SSIM).

Images are (N, H, W, C) in [0, 1] (data range 1). SSIM follows Wang et al. 2004 as commonly implemented
(scikit-image `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`):
11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, statistics per channel over 'valid' windows,
averaged over pixels and channels. Every metric returns one value per image.
"""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def to_unit_range(images: Array) -> Array:
  """[-1, 1] -> [0, 1], clipped (predictions can leave the range: lf + hf is not clamped)."""
  return jnp.clip((images + 1) / 2, 0, 1)


def l1(a: Array, b: Array) -> Array:
  return jnp.abs(a - b).mean(axis=(1, 2, 3))


def psnr(a: Array, b: Array, eps: float = 1e-10) -> Array:
  mse = jnp.square(a - b).mean(axis=(1, 2, 3))
  return 10 * jnp.log10(1.0 / jnp.maximum(mse, eps))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-x**2 / (2 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def _filter(x: Array, window: np.ndarray) -> Array:
  """Separable 'valid' Gaussian filtering of every channel of (N, H, W, C)."""
  c = x.shape[-1]
  k = jnp.asarray(window)
  kh = jnp.tile(k[:, None, None, None], (1, 1, 1, c))
  kw = jnp.tile(k[None, :, None, None], (1, 1, 1, c))
  dn = ('NHWC', 'HWIO', 'NHWC')
  x = jax.lax.conv_general_dilated(x, kh, (1, 1), 'VALID', dimension_numbers=dn, feature_group_count=c)
  return jax.lax.conv_general_dilated(x, kw, (1, 1), 'VALID', dimension_numbers=dn, feature_group_count=c)


def ssim(a: Array, b: Array, window_size: int = 11, sigma: float = 1.5) -> Array:
  window = _gaussian_window(window_size, sigma)
  c1, c2 = 0.01**2, 0.03**2
  mu_a, mu_b = _filter(a, window), _filter(b, window)
  var_a = _filter(a * a, window) - mu_a**2
  var_b = _filter(b * b, window) - mu_b**2
  cov = _filter(a * b, window) - mu_a * mu_b
  num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
  den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
  return (num / den).mean(axis=(1, 2, 3))
