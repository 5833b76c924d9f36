"""texture_enhancer (docs/model.md#texture-enhancement): learned gradient descent on the texture, unrolled 4 steps.

No optimiser and no weight update: at every step the enhancer network sees the current texture and the
gradient of a guiding loss (how well lf + warp(texture) reconstructs the source frame(s)) w.r.t. that
texture, computed with an inner `jax.grad`, and adds tanh(output) to the texture. The gradient input is a
constant (first-order scheme); gradients flow through the chain of texture updates. Each step is a
separate forward call of the network (one spectral-norm power iteration per call in train mode).
"""

from typing import Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.models import blocks
from bilayer_jax.models import layers
from bilayer_jax.models import warp
from bilayer_jax.models.config import BilayerConfig

Array = jax.Array


class EnhancerNet(nn.Module):
  """The original's texture_enhancer `Generator` (`texture_enhancer.net`): [texture, grad] -> delta."""
  cfg: BilayerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, frames_per_person: int, train: bool = False) -> Array:
    cfg = self.cfg
    spectral = cfg.spectral('texture_enhancer')
    block_kw = dict(norm=cfg.enh_norm_layer_type, activation=cfg.enh_activation_type, eps=cfg.eps,
                    bn_momentum=cfg.bn_momentum, spectral=spectral, dtype=self.dtype)
    conv_kw = dict(spectral=spectral, eps=cfg.eps, dtype=self.dtype)
    index = 0
    x = layers.Conv2d(cfg.enh_num_channels, 3, name='blocks_0', **conv_kw)(x, train)
    channels = cfg.enh_num_channels
    for i in range(1, cfg.num_enh_down_blocks + 1):
      index += 1
      new = min(int(cfg.enh_num_channels * 2**i), cfg.enh_max_channels)
      x = blocks.ResBlock(channels, new, resize='down', downsampling=cfg.enh_downsampling_type,
                          name=f'blocks_{index}', **block_kw)(x, train=train)
      channels = new
    for i in range(cfg.enh_num_blocks):
      index += 1
      x = blocks.ResBlock(channels, channels, output_aggregated=i == cfg.enh_num_blocks - 1,
                          frames_per_person=frames_per_person, name=f'blocks_{index}', **block_kw)(x, train=train)
    for i in range(cfg.num_enh_down_blocks - 1, -1, -1):
      index += 1
      new = min(int(cfg.enh_num_channels * 2**i), cfg.enh_max_channels)
      x = blocks.ResBlock(channels, new, resize='up', name=f'blocks_{index}', **block_kw)(x, train=train)
      channels = new
    index += 1
    if cfg.enh_norm_layer_type != 'none':
      # The original builds this norm with 3 channels (a crash for any norm but 'none'); we use the
      # number of channels it actually receives.
      x = layers.BatchNorm(eps=cfg.eps, momentum=cfg.bn_momentum, name=f'blocks_{index}')(x, train)
    x = layers.activation(cfg.enh_activation_type)(x)
    return layers.Conv2d(3, 3, name=f'blocks_{index + 2}', **conv_kw)(x, train)


def guiding_loss(texture: Array, source_imgs: Array, source_lf: Array, source_uvs: Array,
                 source_segs: Optional[Array], loss_type: str) -> Array:
  """SSE/2 (or L1 sum) between the source frames and lf + warp(texture), masked with the source seg."""
  pred = source_lf + warp.grid_sample(texture, source_uvs)
  if source_segs is not None:
    pred = pred * source_segs + (-1) * (1 - source_segs)
  if loss_type == 'sse':
    return jnp.sum(jnp.square(source_imgs - pred)) / 2
  return jnp.sum(jnp.abs(source_imgs - pred))


class TextureEnhancer(nn.Module):
  """Enhances a texture with `enh_unrolling_depth` learned-gradient steps on the source frames."""
  cfg: BilayerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, texture: Array, source_imgs: Array, source_lf: Array, source_uvs: Array,
               source_segs: Optional[Array], train: bool = False) -> Tuple[Array, List[Dict[str, Array]]]:
    """Runs the unrolled enhancement.

    Args:
      texture: (B, S, S, 3) texture to enhance.
      source_imgs: (B, n, S, S, 3) source frames (ground truth).
      source_lf, source_uvs: (B, n, S, S, 3|2) the inference generator's LF rgb and uv for the source pose.
      source_segs: (B, n, S, S, 1) predicted source masks, or None without segmentation.
      train: train mode of the enhancer network.

    Returns:
      The enhanced (B, S, S, 3) texture and, per step, the network's input and raw output (NHWC,
      (B*n, ...) rows) for inspection and parity checks.
    """
    cfg = self.cfg
    net = EnhancerNet(cfg, self.dtype, name='net')
    b, n = source_imgs.shape[:2]
    flat = lambda x: x.reshape((b * n,) + x.shape[2:])
    src_uvs, src_lf, src_imgs = flat(source_uvs), flat(source_lf), flat(source_imgs)
    src_segs = None if source_segs is None else flat(source_segs)
    if src_segs is not None:
      src_imgs = src_imgs * src_segs + (-1) * (1 - src_segs)
    src_imgs = jax.lax.stop_gradient(src_imgs)
    src_lf, src_uvs = jax.lax.stop_gradient(src_lf), jax.lax.stop_gradient(src_uvs)
    grad_fn = jax.grad(guiding_loss)
    steps = []
    for _ in range(cfg.enh_unrolling_depth):
      tex_rep = jnp.repeat(texture[:, None], n, axis=1).reshape((b * n,) + texture.shape[1:])
      grad = grad_fn(jax.lax.stop_gradient(tex_rep), src_imgs, src_lf, src_uvs, src_segs,
                     cfg.enh_guiding_rgb_loss_type)
      inputs = jnp.concatenate([tex_rep, jax.lax.stop_gradient(grad)], axis=-1)
      outputs = net(inputs, n, train)
      delta = jnp.tanh(outputs[..., :3])
      if delta.shape[0] == b * n:
        delta = delta.reshape((b, n) + delta.shape[1:]).mean(axis=1)
      texture = texture + delta
      steps.append({'net_input': inputs, 'net_output': outputs})
    return texture, steps
