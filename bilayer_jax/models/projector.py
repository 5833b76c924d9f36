"""Projectors: identity embeddings -> per-identity adaptive parameters of a generator (docs/model.md#projectors).

For generator block k (deepest first) the projector takes embedding k (B, 8, 8, c_k), pools it to s x s
(an AdaptiveAvgPool2d; for s > 8 this is pure replication), flattens it channel-major into rows (the
inference projector puts two consecutive channels in one row: channel_mult 0.5), and applies a shared
3-layer linear MLP (no non-linearities) to every row. Each row yields one output channel: the MLP's last
unit is its bias, the rest its weight row.

Outputs come as `(weight, bias)` pairs in the original's assignment order (`net.modules()` order of the
consumers), which the generator consumes block by block:
  texture block k:   [norm2_k.conv_weight, norm2_k.conv_bias, skip_k, norm1_{k+1}.conv_weight, .conv_bias]
  inference block k: [norm2_k (gamma - 1, beta), skip_k, norm1_{k+1} (gamma - 1, beta)]
(norm1 of block 0 is a plain BN; for the last block "norm1_{k+1}" is the generator's final norm.)
Weights are (B, C_out, C_in) for 1x1 convs and (B, C) for AdaBN; biases (B, C_out).
"""

from typing import List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.models import layers
from bilayer_jax.models.config import BilayerConfig

Array = jax.Array

BOTTLENECK_SIZE = 1024  # the original's hard-coded bottleneck (32 x 32 pooled embedding per row)


def adaptive_avg_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) averaging matrix of PyTorch's AdaptiveAvgPool (bins [floor(i*in/out), ceil((i+1)*in/out)))."""
  mat = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    mat[i, start:end] = 1.0 / (end - start)
  return mat


def adaptive_avg_pool_nchw(x: Array, out_size: int) -> Array:
  """AdaptiveAvgPool2d((out, out)) of an NCHW tensor; exact replication when out is a multiple of in."""
  h, w = x.shape[-2:]
  if out_size % h == 0 and out_size % w == 0:
    return jnp.repeat(jnp.repeat(x, out_size // h, axis=-2), out_size // w, axis=-1)
  ph = jnp.asarray(adaptive_avg_pool_matrix(h, out_size))
  pw = jnp.asarray(adaptive_avg_pool_matrix(w, out_size))
  return jnp.einsum('oh,bchw,pw->bcop', ph, x, pw)


class Projector(nn.Module):
  """`prj_tex` (kind='tex') or `prj_inf` (kind='inf')."""
  cfg: BilayerConfig
  kind: str
  spectral: bool = True
  dtype: jnp.dtype = jnp.float32

  def _gen_channels(self, i: int) -> int:
    return self.cfg.tex_channels(i) if self.kind == 'tex' else self.cfg.inf_channels(i)

  def block_output_widths(self, i: int) -> List[int]:
    """MLP output widths of the projector block for generator level i (its consumers, in order)."""
    out_in, out = self._gen_channels(i), self._gen_channels(i - 1)
    if self.kind == 'tex':  # two SPADE norms (2 convs each) and the skip conv
      return [out + 1, out + 1, out_in + 1, out + 1, out + 1]
    return [2, out_in + 1, 2]  # two AdaBNs (gamma, beta) and the skip conv

  @nn.compact
  def __call__(self, embeds: Sequence[Array], train: bool = False) -> List[Tuple[Array, Array]]:
    cfg = self.cfg
    num_blocks = cfg.num_tex_blocks
    if len(embeds) != num_blocks:
      raise ValueError(f'{self.name}: expected {num_blocks} identity embeddings, got {len(embeds)}')
    outputs = []
    for k, i in enumerate(range(num_blocks, 0, -1)):
      in_channels = cfg.emb_channels(i)
      channel_mult = self._gen_channels(i) / float(in_channels)
      size = int(BOTTLENECK_SIZE**0.5 * channel_mult)
      embed = jnp.transpose(embeds[k], (0, 3, 1, 2))  # NHWC -> NCHW: rows are read channel-major
      b, c = embed.shape[:2]
      rows = int(c * channel_mult)
      embed = adaptive_avg_pool_nchw(embed, size).reshape(b * rows, -1)
      for j, width in enumerate(self.block_output_widths(i)):
        h = embed
        for l, features in enumerate((in_channels, in_channels, width)):
          h = layers.Dense(features, spectral=self.spectral, eps=cfg.eps, dtype=self.dtype,
                           name=f'fc_blocks_{k}_{j}_{l}')(h, train)
        params = h.reshape(b, rows, width)
        weight, bias = params[..., :-1], params[..., -1]
        if width == 2:  # AdaBN: one scale per channel
          weight = weight[..., 0]
        outputs.append((weight, bias))
    return outputs
