"""The three FSTH networks as the reference builds them (docs/fsth.md#networks), NHWC, images in [0, 1].

* `Embedder`: (frame, landmark image) -> embedding: the pair concatenated to 6 channels, zero-padded to
  256², six residual down blocks without normalisation (self-attention after the third), global MAX pooling,
  leaky ReLU.
* `Generator`: (landmark image, embedding) -> image in (0, 1): padded encoder of four down blocks each
  followed by instance norm (self-attention after the third), residual blocks and up blocks whose adaptive
  instance norms take their parameters from `psi = P e` (or, once fine-tuned, from the learned `psi`),
  self-attention after the second up block, the last up block resizing straight to the input size, AdaIN,
  leaky ReLU, a plain convolution and a sigmoid.
* `Discriminator`: (frame, landmark image, per-video vector) -> realism score and the features of its seven
  blocks: the embedder's trunk (padding as for 224² inputs whatever the input size) plus one residual
  block, global AVERAGE pooling, leaky ReLU; score `h . (w + w0) + b` with `w` the video's row of the
  embedding matrix (kept by the trainer, sharded), or `h . w' + b` once fine-tuned.
"""

from typing import List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.models.fsth import blocks
from bilayer_jax.models.fsth.config import FSTHConfig

Array = jax.Array


class Trunk(nn.Module):
  """The six down blocks (self-attention after the third) shared by the embedder and the discriminator;
  returns the output of every down block."""
  cfg: FSTHConfig

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> List[Array]:
    features = []
    for index, channels in enumerate(self.cfg.down_channels):
      x = blocks.ResBlockDown(self.cfg, channels, name=f'res_down{index + 1}')(x, train)
      features.append(x)
      if index == 2:
        x = blocks.SelfAttention(self.cfg, name='self_att')(x, train)
    return features


class Embedder(nn.Module):
  """(N, H, W, 3) frames and landmark images -> (N, embedding_dim)."""
  cfg: FSTHConfig

  @nn.compact
  def __call__(self, frames: Array, landmarks: Array, train: bool = False) -> Array:
    x = jnp.concatenate([frames, landmarks], axis=-1)
    x = blocks.pad_to(x, self.cfg.pad_amount(x.shape[1]))
    out = Trunk(self.cfg, name='trunk')(x, train)[-1]
    return blocks.leaky_relu(jnp.max(out, axis=(1, 2)), self.cfg)


class Generator(nn.Module):
  """(N, H, W, 3) landmark images + (N, embedding_dim) embeddings -> (N, H, W, 3) images in (0, 1).

  `finetuned`: take the AdaIN parameters from the learned `psi` (initialised to P e of the new person by
  fine-tuning) instead of projecting `embeddings`.
  """
  cfg: FSTHConfig

  @nn.compact
  def __call__(self, landmarks: Array, embeddings: Optional[Array] = None, train: bool = False,
               finetuned: bool = False) -> Array:
    cfg = self.cfg
    projection = self.param('projection', nn.initializers.normal(0.02), (cfg.projection_length, cfg.embedding_dim))
    psi_finetuned = self.param('psi', nn.initializers.uniform(1.0), (cfg.projection_length,))
    if finetuned:
      psi = jnp.broadcast_to(psi_finetuned, (landmarks.shape[0], cfg.projection_length))
    else:
      psi = embeddings @ projection.T
    slices = blocks.split_adain(psi, cfg.adain_sizes)
    x = self._encode(landmarks, train)
    for index in range(cfg.num_res_blocks):
      x = blocks.ResBlock(cfg, name=f'res{index + 1}')(x, slices[index], train)
    return self._decode(x, slices[cfg.num_res_blocks:], landmarks.shape[1], train)

  def _encode(self, landmarks: Array, train: bool) -> Array:
    cfg = self.cfg
    x = blocks.pad_to(landmarks, cfg.pad_amount(landmarks.shape[1]))
    for index, channels in enumerate(cfg.down_channels[:4]):
      kernel = cfg.first_kernel if index == 0 else 3
      x = blocks.ResBlockDown(cfg, channels, kernel, name=f'res_down{index + 1}')(x, train)
      x = blocks.InstanceNorm(cfg.instance_norm_eps, name=f'in{index + 1}')(x)
      if index == 2:
        x = blocks.SelfAttention(cfg, name='self_att_down')(x, train)
    return x

  def _decode(self, x: Array, slices: Tuple[Array, ...], out_size: int, train: bool) -> Array:
    cfg = self.cfg
    last = len(cfg.up_channels) - 1
    for index, (_, cout) in enumerate(cfg.up_channels):
      size = out_size if index == last else None
      x = blocks.ResBlockUp(cfg, cout, size, name=f'res_up{index + 1}')(x, slices[index], train)
      if index == 1:
        x = blocks.SelfAttention(cfg, name='self_att_up')(x, train)
    mean, scale = blocks.split_adain(slices[-1], (cfg.up_channels[-1][1],) * 2)
    x = blocks.leaky_relu(blocks.adain(x, mean, scale, cfg.adain_eps), cfg)
    x = blocks.Conv(3, spectral=False, name='conv_out')(x, train)
    return jax.nn.sigmoid(x)


class Discriminator(nn.Module):
  """(N, H, W, 3) frames and landmark images + (N, embedding_dim) per-video vectors -> ((N,) scores, the
  seven block outputs). `finetuned`: score with the learned `w_prime` instead of `video_vectors + w0`."""
  cfg: FSTHConfig

  @nn.compact
  def __call__(self, frames: Array, landmarks: Array, video_vectors: Optional[Array] = None,
               train: bool = False, finetuned: bool = False) -> Tuple[Array, List[Array]]:
    cfg = self.cfg
    x = jnp.concatenate([frames, landmarks], axis=-1)
    x = blocks.pad_to(x, cfg.pad_amount(cfg.discriminator_pad_from))
    features = Trunk(cfg, name='trunk')(x, train)
    features.append(blocks.ResBlockD(cfg, name='res')(features[-1], train))
    h = blocks.leaky_relu(jnp.mean(features[-1], axis=(1, 2)), cfg)
    w0 = self.param('w0', nn.initializers.normal(1.0), (cfg.embedding_dim,))
    bias = self.param('b', nn.initializers.normal(1.0), ())
    w_prime = self.param('w_prime', nn.initializers.normal(1.0), (cfg.embedding_dim,))
    weights = jnp.broadcast_to(w_prime, h.shape) if finetuned else video_vectors + w0
    return jnp.sum(h * weights, axis=-1) + bias, features
