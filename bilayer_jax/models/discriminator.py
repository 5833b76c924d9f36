"""discriminator: image + stickman -> 8x8 patch scores and 6 feature maps for feature matching.

docs/model.md#discriminator describes the network.

One call is one pass over a batch (the trainer runs it twice per step: once on [real; stop(fake)] for
the discriminator's loss and once on [real; fake] with its parameters held constant for the
generator's losses; see `bilayer.discriminator_passes`).
"""

from typing import List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.models import blocks
from bilayer_jax.models import layers
from bilayer_jax.models.config import BilayerConfig

Array = jax.Array


class DiscriminatorNet(nn.Module):
  """The original's `Discriminator` (`discriminator.net`)."""
  cfg: BilayerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Tuple[Array, List[Array]]:
    cfg = self.cfg
    spectral = cfg.spectral('discriminator')
    conv_kw = dict(spectral=spectral, eps=cfg.eps, dtype=self.dtype)
    block_kw = dict(norm=cfg.dis_norm_layer_type, activation=cfg.dis_activation_type,
                    bn_momentum=cfg.bn_momentum, return_feats=True, **conv_kw)
    x = layers.Conv2d(cfg.dis_num_channels, 3, name='first_conv', **conv_kw)(x, train)
    channels = cfg.dis_num_channels
    feats = []
    num_down = cfg.num_dis_down_blocks
    # As the original: all downsampling blocks, then same-resolution blocks up to dis_num_blocks.
    for i in range(1, max(num_down, cfg.dis_num_blocks) + 1):
      down = i <= num_down
      new = min(int(cfg.dis_num_channels * 2**i), cfg.dis_max_channels) if down else channels
      x, f = blocks.ResBlock(channels, new, resize='down' if down else 'none',
                             downsampling=cfg.dis_downsampling_type, name=f'blocks_{i - 1}',
                             **block_kw)(x, train=train)
      feats.append(f)
      channels = new
    if cfg.dis_norm_layer_type == 'bn':
      x = layers.BatchNorm(eps=cfg.eps, momentum=cfg.bn_momentum, name='final_block_0')(x, train)
    x = layers.activation(cfg.dis_activation_type)(x)
    scores = layers.Conv2d(1, 1, name='linear', **conv_kw)(x, train)
    return scores, feats


class Discriminator(nn.Module):
  """images (N, H, W, 3) + stickmen (N, H, W, 3) -> scores (N, s, s, 1), 6 feature maps."""
  cfg: BilayerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, imgs: Array, stickmen: Array, train: bool = False) -> Tuple[Array, List[Array]]:
    inputs = imgs if self.cfg.dis_no_stickman else jnp.concatenate([imgs, stickmen], axis=-1)
    return DiscriminatorNet(self.cfg, self.dtype, name='net')(inputs, train)
