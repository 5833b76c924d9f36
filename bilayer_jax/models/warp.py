"""Bilinear texture warping: PyTorch `grid_sample` semantics (zeros padding, align_corners=False).

The sampling grid holds (x, y) in [-1, 1] in its last axis; -1 and +1 are the outer EDGES of the image
(align_corners=False), so the identity grid holds pixel centres -1 + (2i + 1) / size. Samples outside the
texture read zeros. Written with gathers so that it is differentiable w.r.t. both the texture
(scatter-add) and the grid, and converts to builtin TFLite ops.
"""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def identity_grid(image_size: int) -> np.ndarray:
  """(1, S, S, 2) float32 grid of pixel centres, x along width in [..., 0] and y along height in [..., 1].

  Bit-identical to the original's `identity_grid` buffer for power-of-two sizes (all valid sizes).
  """
  centres = ((np.arange(image_size, dtype=np.float64) * 2 + 1) / image_size - 1).astype(np.float32)
  v, u = np.meshgrid(centres, centres, indexing='ij')
  return np.stack([u, v], axis=-1)[None]


def _bilinear(grid: Array, h: int, w: int, gather) -> Array:
  """Sum over the 4 bilinear corners of `gather(flat_index, valid_weight)` (zero padding outside)."""
  # Unnormalise exactly as PyTorch does for align_corners=False.
  x = ((grid[..., 0] + 1) * w - 1) / 2
  y = ((grid[..., 1] + 1) * h - 1) / 2
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  x1 = x0 + 1
  y1 = y0 + 1
  wx1, wy1 = x - x0, y - y0
  wx0, wy0 = x1 - x, y1 - y

  def corner(xi, yi, weight):
    inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
    xc = jnp.clip(xi, 0, w - 1).astype(jnp.int32)
    yc = jnp.clip(yi, 0, h - 1).astype(jnp.int32)
    return gather(yc * w + xc, jnp.where(inside, weight, 0))

  return (corner(x0, y0, wx0 * wy0) + corner(x1, y0, wx1 * wy0) +
          corner(x0, y1, wx0 * wy1) + corner(x1, y1, wx1 * wy1))


def grid_sample(image: Array, grid: Array) -> Array:
  """Samples `image` (N, H, W, C) at `grid` (N, Ho, Wo, 2) -> (N, Ho, Wo, C), bilinear, zero padding."""
  n, h, w, c = image.shape
  # One flat gather over all N images (offsets n * H * W): its gradient is a plain scatter-add without
  # batch dimensions, which the TFLite converter supports (the enhancer's inner gradient needs it).
  flat = image.reshape(n * h * w, c)
  offsets = (jnp.arange(n, dtype=jnp.int32) * (h * w)).reshape((n,) + (1,) * (grid.ndim - 2))

  def gather(index, weight):
    return jnp.take(flat, index + offsets, axis=0) * weight.astype(image.dtype)[..., None]

  return _bilinear(grid, h, w, gather)


def grid_sample_shared(image: Array, grid: Array) -> Array:
  """Samples ONE image (H, W, C) at every grid of (N, Ho, Wo, 2): `grid_sample` with the image shared by
  all N (the per-frame network's baked texture), without materialising N copies of it.

  Written for the per-frame runtimes (XLA, TFLite): the image gets a border of zeros and the corner
  coordinates are clamped into it, which gives zero padding without validity masks, and the four corners
  are one gather of in-bounds rows (no index checks). Same values as `grid_sample`.
  """
  h, w, c = image.shape
  table = jnp.pad(image, ((1, 1), (1, 1), (0, 0))).reshape((h + 2) * (w + 2), c)
  x = ((grid[..., 0] + 1) * w - 1) / 2
  y = ((grid[..., 1] + 1) * h - 1) / 2
  x0, y0 = jnp.floor(x), jnp.floor(y)
  wx1, wy1 = x - x0, y - y0
  wx0, wy0 = 1 - wx1, 1 - wy1
  # Padded-table coordinates: -1 and w (h) are the zero border; anything further out clamps onto it.
  xs = jnp.clip(jnp.stack([x0, x0 + 1]) + 1, 0, w + 1).astype(jnp.int32)
  ys = jnp.clip(jnp.stack([y0, y0 + 1]) + 1, 0, h + 1).astype(jnp.int32)
  index = jnp.stack([ys[0], ys[0], ys[1], ys[1]]) * (w + 2) + jnp.stack([xs[0], xs[1], xs[0], xs[1]])
  weight = jnp.stack([wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1])
  corners = jnp.take(table, index, axis=0, mode='clip')
  return (corners * weight.astype(image.dtype)[..., None]).sum(axis=0)
