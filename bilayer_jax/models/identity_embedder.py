"""identity_embedder (docs/model.md#identity-embedder): source image(s) + stickman -> 6 identity embeddings at 8x8.

The encoder downsamples with residual blocks and averages over the n source frames in its last block;
the decoder's blocks run at the embedding resolution and each emits its `block_feats` (act -> conv ->
act, before the residual sum) as one embedding, deepest first (embedding 0 feeds generator block 0).
"""

from typing import List

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.models import blocks
from bilayer_jax.models import layers
from bilayer_jax.models.config import BilayerConfig

Array = jax.Array


class Embedder(nn.Module):
  """The original's `Embedder` (`identity_embedder.net`)."""
  cfg: BilayerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, train: bool = False) -> List[Array]:
    """inputs: (B, n, H, W, C) -> list of (B, s, s, C_k) embeddings, k = 0 (deepest) first."""
    cfg = self.cfg
    spectral = cfg.spectral('identity_embedder')
    b, n = inputs.shape[:2]
    block_kw = dict(norm=cfg.emb_norm_layer_type, activation=cfg.emb_activation_type, eps=cfg.eps,
                    bn_momentum=cfg.bn_momentum, spectral=spectral, dtype=self.dtype)
    x = inputs.reshape((b * n,) + inputs.shape[2:])
    x = layers.Conv2d(cfg.emb_num_channels, 3, spectral=spectral, eps=cfg.eps, dtype=self.dtype,
                      name='enc_0')(x, train)
    out_channels = cfg.emb_num_channels
    for i in range(1, cfg.num_enc_blocks + 1):
      in_channels, out_channels = out_channels, cfg.emb_channels(i)
      x = blocks.ResBlock(in_channels, out_channels, resize='down', downsampling=cfg.emb_downsampling_type,
                          output_aggregated=i == cfg.num_enc_blocks, frames_per_person=n,
                          name=f'enc_{i}', **block_kw)(x, train=train)
    embeds = []
    for k, i in enumerate(range(cfg.num_tex_blocks - 1, -1, -1)):
      in_channels, out_channels = out_channels, cfg.tex_channels(i)
      x, feats = blocks.ResBlock(in_channels, out_channels, return_feats=True, name=f'dec_blocks_{k}',
                                 **block_kw)(x, train=train)
      embeds.append(feats)
    if embeds[0].shape[0] == b * n:  # no encoder block averaged the source frames: average embeddings
      embeds = [layers.split_frames(e, b).mean(axis=1) for e in embeds]
    return embeds


class IdentityEmbedder(nn.Module):
  """The original's identity_embedder NetworkWrapper: masks the source, adds the stickman, embeds."""
  cfg: BilayerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, source_imgs: Array, source_segs: Array, source_stickmen: Array,
               train: bool = False) -> List[Array]:
    """All inputs (B, n, H, W, C) NHWC; images in [-1, 1], segs in [0, 1]."""
    inputs = source_imgs
    if self.cfg.emb_apply_masks:
      inputs = inputs * source_segs + (-1) * (1 - source_segs)
    if not self.cfg.emb_no_stickman:
      inputs = jnp.concatenate([inputs, source_stickmen], axis=-1)
    return Embedder(self.cfg, self.dtype, name='net')(inputs, train)
