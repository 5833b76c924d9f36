"""The LPD networks as the official code builds them (docs/lpd.md#networks), NHWC, images in [0, 1].

* `Embedder`: K identity frames -> per-frame and mean identity vectors (ResNeXt-50); one pose frame -> a
  pose vector (MobileNetV2).
* `Generator`: (identity vector, pose vector) -> (masked image, mask). A learned constant goes through
  residual blocks and nearest-x2 up blocks whose adaptive instance norms take their per-sample bias and
  scale from an MLP on the concatenated vectors; a tanh head gives RGB (0.75·t + 0.5) and mask (0.5·t + 0.5).
  Once fine-tuned (`finetuned=True`), the identity vector is the generator's own `identity_embedding`.
* `Discriminator`: image + per-video projection vector -> (score, seven feature maps): a residual stem, down
  blocks and plain blocks without normalisation, ReLU and a SUM over space, score `linear(h) + h . e`.
  Reference quirk kept: each residual block starts with an in-place ReLU, so its skip path sees the
  rectified input and the stored feature maps 1-6 are rectified.
* `EmbeddingTable`: the discriminator's per-video projection vectors, spectrally normalised as ONE matrix
  (sigma of the whole table), as `spectral_norm(nn.Embedding)` does.

Every convolution and linear layer of the generator and discriminator is spectrally normalised. Module
names follow PyTorch's module paths (Sequential indices included: `decoder_blocks_2/block_4` <->
`decoder_blocks.2.block.4`), see `bilayer_jax.convert.lpd_checkpoint`.
"""

from typing import List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.models import layers
from bilayer_jax.models.lpd import encoders
from bilayer_jax.models.lpd.config import LPDConfig

Array = jax.Array
AffinePair = Tuple[Array, Array]  # (bias, scale), each (N, C)


class Embedder(nn.Module):
  """The identity encoder and the pose encoder (`identity_encoder`, `pose_encoder`)."""
  cfg: LPDConfig

  def setup(self):
    self.identity_encoder = encoders.IdentityEncoder(self.cfg)
    self.pose_encoder = encoders.PoseEncoder(self.cfg)

  def identity(self, frames: Array, train: bool = False) -> Tuple[Array, Array]:
    """(B, K, H, W, 3) -> (per-frame (B, K, D), mean over the K frames (B, D))."""
    b, k = frames.shape[:2]
    each = self.identity_encoder(frames.reshape((b * k,) + frames.shape[2:]), train).reshape(b, k, -1)
    return each, jnp.mean(each, axis=1)

  def pose(self, frames: Array, train: bool = False, dropout_keep: Optional[Array] = None) -> Array:
    """(B, H, W, 3) -> (B, pose_dim)."""
    return self.pose_encoder(frames, train, dropout_keep)

  def __call__(self, identity_frames: Array, pose_frames: Array, train: bool = False,
               dropout_keep: Optional[Array] = None) -> Tuple[Array, Array, Array]:
    each, mean = self.identity(identity_frames, train)
    return each, mean, self.pose(pose_frames, train, dropout_keep)


def instance_norm(x: Array, eps: float) -> Array:
  """InstanceNorm2d without affine: biased variance over space per sample and channel."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def adain(x: Array, affine: AffinePair, eps: float) -> Array:
  bias, scale = affine
  return instance_norm(x, eps) * scale[:, None, None, :] + bias[:, None, None, :]


def _conv_indices(normalize: bool, upsample: bool) -> Tuple[int, int]:
  """Positions of the two 3x3 convolutions in the reference's block Sequential: [norm], ReLU, [upsample],
  an empty padding Sequential, conv, [norm], ReLU, padding, conv."""
  first = int(normalize) + 1 + int(upsample) + 1
  return first, first + int(normalize) + 3


class ResBlock(nn.Module):
  """The reference's residual block. Adaptive (generator): AdaIN -> ReLU -> [up] -> conv -> AdaIN -> ReLU ->
  conv, bias-free convolutions, skip [up] + 1x1 conv when the shape changes. Plain (discriminator): ReLU ->
  conv -> ReLU -> conv -> [avg pool] on the already rectified input (see the module docstring)."""
  cfg: LPDConfig
  features: int
  upsample: bool = False
  downsample: bool = False

  @nn.compact
  def __call__(self, x: Array, affine: Optional[Sequence[AffinePair]] = None, train: bool = False) -> Array:
    eps, adaptive = self.cfg.spectral_eps, affine is not None
    first, second = _conv_indices(adaptive, self.upsample)
    out = adain(x, affine[0], self.cfg.adain_eps) if adaptive else x
    out = jax.nn.relu(out)
    out = layers.Conv2d(self.features, 3, use_bias=not adaptive, eps=eps, upsample_input=self.upsample,
                        name=f'block_{first}')(out, train)
    out = adain(out, affine[1], self.cfg.adain_eps) if adaptive else out
    out = layers.Conv2d(self.features, 3, use_bias=not adaptive, eps=eps, name=f'block_{second}')(
        jax.nn.relu(out), train)
    if self.downsample:
      out = layers.avg_pool2x(out)
    skip = x
    if x.shape[-1] != self.features or self.upsample or self.downsample:
      skip = layers.Conv2d(self.features, 1, eps=eps, upsample_input=self.upsample,
                           name=f'skip_{int(self.upsample)}')(x, train)
      skip = layers.avg_pool2x(skip) if self.downsample else skip
    return out + skip


class Constant(nn.Module):
  """The generator's learned input, initialised to ones, repeated over the batch."""
  shape: Tuple[int, int, int]

  @nn.compact
  def __call__(self, batch: int) -> Array:
    constant = self.param('constant', nn.initializers.ones, (1,) + tuple(self.shape))
    return jnp.broadcast_to(constant, (batch,) + constant.shape[1:])


class Generator(nn.Module):
  """(identity (N, identity_dim) or None once fine-tuned, pose (N, pose_dim)) -> (masked RGB, mask), NHWC in
  [0, 1]. The AdaIN parameters are sown as intermediates 'affine_params'."""
  cfg: LPDConfig
  finetuned: bool = False

  @nn.compact
  def __call__(self, identity: Optional[Array], pose: Array, train: bool = False) -> Tuple[Array, Array]:
    cfg, n = self.cfg, pose.shape[0]
    if self.finetuned:
      own = self.param('identity_embedding', nn.initializers.uniform(1.0), (1, cfg.identity_dim))
      identity = jnp.broadcast_to(own, (n, cfg.identity_dim))
    slices = self._affine(jnp.concatenate([identity, pose], axis=-1), train)
    channels = cfg.generator_channels
    x = Constant((cfg.constant_size, cfg.constant_size, channels[0]), name='constant')(n).astype(pose.dtype)
    specs = [(channels[0], False)] * cfg.num_residual_blocks + [(c, True) for c in channels[1:]]
    for index, (features, upsample) in enumerate(specs):
      x = ResBlock(cfg, features, upsample, name=f'decoder_blocks_{index}')(x, slices[2 * index:2 * index + 2], train)
    x = jax.nn.relu(adain(x, slices[-1], cfg.adain_eps))
    x = layers.Conv2d(4, 3, eps=cfg.spectral_eps, name=f'decoder_blocks_{len(specs) + 2}')(x, train)
    x = jnp.tanh(x)
    segmentation = 0.5 * x[..., 3:] + 0.5
    return (0.75 * x[..., :3] + 0.5) * segmentation, segmentation

  def _affine(self, joint: Array, train: bool) -> List[AffinePair]:
    """The MLP's output split into (bias, scale) per AdaIN in module order."""
    cfg = self.cfg
    eps = cfg.mlp_spectral_eps
    hidden = layers.Dense(cfg.mlp_hidden, eps=eps, name='affine_params_projector_0')(joint, train)
    params = layers.Dense(cfg.num_affine_params, eps=eps, name='affine_params_projector_2')(
        jax.nn.relu(hidden), train)
    self.sow('intermediates', 'affine_params', params)
    pairs, start = [], 0
    for c in cfg.adain_channels:
      pairs.append((params[:, start:start + c], params[:, start + c:start + 2 * c]))
      start += 2 * c
    return pairs


class Discriminator(nn.Module):
  """(N, H, W, 3) images + (N, identity_dim) projection vectors (or None: no projection term) -> ((N,)
  scores, the seven feature maps as the reference stores them)."""
  cfg: LPDConfig

  @nn.compact
  def __call__(self, images: Array, projection: Optional[Array] = None,
               train: bool = False) -> Tuple[Array, List[Array]]:
    cfg = self.cfg
    eps = cfg.spectral_eps
    channels = cfg.discriminator_channels
    out = layers.Conv2d(channels[0], 3, eps=eps, name='down_block_0')(images, train)
    out = layers.Conv2d(channels[0], 3, eps=eps, name='down_block_2')(jax.nn.relu(out), train)
    x = layers.avg_pool2x(out) + layers.avg_pool2x(layers.Conv2d(channels[0], 1, eps=eps, name='skip_0')(images,
                                                                                                          train))
    raw = [x]
    for index, features in enumerate(channels[1:]):
      downsample = index < cfg.num_down_blocks - 1
      x = ResBlock(cfg, features, downsample=downsample, name=f'blocks_{index}')(jax.nn.relu(x), None, train)
      raw.append(x)
    h = jnp.sum(jax.nn.relu(x), axis=(1, 2))
    score = layers.Dense(1, eps=eps, name='linear')(h, train)[:, 0]
    if projection is not None:
      score = score + jnp.sum(h * projection, axis=-1)
    return score, [jax.nn.relu(f) for f in raw[:-1]] + [raw[-1]]


def _uniform_pm(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class EmbeddingTable(nn.Module):
  """`rows` projection vectors of width `features` (init U(±0.1)), spectrally normalised as one matrix:
  returns the normalised rows at `labels` (one power iteration per train-mode call)."""
  rows: int
  features: int
  eps: float = 1e-4

  @nn.compact
  def __call__(self, labels: Array, train: bool = False) -> Array:
    table = self.param('embedding', _uniform_pm(0.1), (self.rows, self.features))
    normalised = layers.spectral_normalize(self, table, table, train, self.eps)
    return normalised[labels]
