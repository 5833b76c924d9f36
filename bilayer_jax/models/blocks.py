"""Normalisation layers with adaptive parameters and the pre-activation residual block (docs/model.md#building-blocks).

Submodule names follow the original's PyTorch module indices (`block_feats_3` is `block_feats.3`), so
that checkpoint conversion is a mechanical renaming (see `bilayer_jax.convert.torch_names`).

Adaptive parameters predicted by a projector are passed explicitly as a list of `(weight, bias)` pairs
in the original's `net.modules()` order; each block consumes `ResBlock.num_adaptive` of them.
"""

from typing import Any, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.models import layers

Array = jax.Array
AdaptivePair = Tuple[Array, Array]

NORM_TYPES = ('none', 'bn', 'ada_bn', 'ada_spade_bn')


def check_norm_type(norm: str) -> None:
  if norm not in NORM_TYPES:
    raise ValueError(f'unsupported norm layer type {norm!r}: expected one of {NORM_TYPES}')


def num_norm_adaptive(norm: str) -> int:
  """How many projector outputs a norm layer of this type consumes."""
  return {'ada_bn': 1, 'ada_spade_bn': 2}.get(norm, 0)


class AdaptiveNorm(nn.Module):
  """AdaBN (`ada_bn`) or AdaSPADE (`ada_spade_bn`): affine-free BN modulated per identity.

  AdaBN: y = BN(x) * (1 + w) + b with (B, C) projector outputs w, b.
  AdaSPADE: y = BN(x) * (1 + conv_w(P)) + conv_b(P), where P is the learned (1, S, S, C) `pixel_feats`
  shared by all identities and conv_w, conv_b are per-identity 1x1 convs predicted by the projector.
  """
  norm: str
  spatial_size: int = 1
  eps: float = 1e-7
  momentum: float = 1.0

  @nn.compact
  def __call__(self, x: Array, adaptive: Sequence[AdaptivePair], train: bool = False) -> Array:
    channels = x.shape[-1]
    if self.norm == 'ada_spade_bn':
      size = self.spatial_size
      pixel_feats = self.param('pixel_feats', layers.torch_uniform_init(channels * size * size),
                               (1, size, size, channels))
    y = layers.BatchNorm(affine=False, eps=self.eps, momentum=self.momentum, name='norm_layer')(x, train)
    if self.norm == 'ada_spade_bn':
      (w_scale, b_scale), (w_shift, b_shift) = adaptive
      feats = pixel_feats[0].astype(x.dtype)
      scale = 1.0 + jnp.einsum('hwi,boi->bhwo', feats, w_scale) + b_scale[:, None, None, :]
      shift = jnp.einsum('hwi,boi->bhwo', feats, w_shift) + b_shift[:, None, None, :]
    else:
      (w, b), = adaptive
      scale, shift = 1.0 + w, b
    return layers.modulate(y, scale, shift)


def make_norm(norm: str, spatial_size: int, eps: float, momentum: float, name: str) -> nn.Module:
  if norm == 'bn':
    return layers.BatchNorm(affine=True, eps=eps, momentum=momentum, name=name)
  return AdaptiveNorm(norm=norm, spatial_size=spatial_size, eps=eps, momentum=momentum, name=name)


def apply_norm(module: nn.Module, x: Array, adaptive: Sequence[AdaptivePair], train: bool) -> Array:
  if isinstance(module, AdaptiveNorm):
    return module(x, adaptive, train)
  return module(x, train)


class ResBlock(nn.Module):
  """Pre-activation residual block with the original's layer order (docs/model.md#residual-block).

  block_feats: [norm1] -> act -> [up (non-efficient)] -> conv3x3 -> [norm2] -> act
  block:       [up (efficient)] -> conv3x3 -> [avgpool]
  skip:        [up] -> 1x1 (ada)conv -> [avgpool]   (identity when shapes match)
  """
  in_channels: int
  out_channels: int
  norm: str = 'none'
  activation: str = 'leakyrelu'
  resize: str = 'none'  # 'none' | 'up' | 'down'
  downsampling: str = 'avgpool'
  skip_type: str = 'conv'  # 'conv' | 'ada_conv'
  efficient_upsampling: bool = False
  first_norm_is_not_adaptive: bool = False
  return_feats: bool = False
  output_aggregated: bool = False
  frames_per_person: int = 1
  spatial_size: int = 1  # input spatial size; only AdaSPADE needs it
  eps: float = 1e-7
  bn_momentum: float = 1.0
  spectral: bool = True
  dtype: Any = jnp.float32

  @property
  def norm1_type(self) -> str:
    if self.first_norm_is_not_adaptive:
      return self.norm.replace('ada_', '').replace('spade_', '')
    return self.norm

  @property
  def has_skip(self) -> bool:
    return self.in_channels != self.out_channels or self.resize != 'none'

  @property
  def num_adaptive(self) -> int:
    """Projector outputs consumed, in module order: norm1, norm2, skip."""
    if self.norm == 'none':
      count = 0
    else:
      count = num_norm_adaptive(self.norm1_type) + num_norm_adaptive(self.norm)
    if self.has_skip and self.skip_type == 'ada_conv':
      count += 1
    return count

  def _layout(self) -> Tuple[List[str], List[str], List[str]]:
    """The original's Sequential contents, which fix the submodule indices."""
    normalize = self.norm != 'none'
    up, down = self.resize == 'up', self.resize == 'down'
    feats = (['norm1'] if normalize else []) + ['act']
    feats += ['up'] if up and not self.efficient_upsampling else []
    feats += ['conv1'] + (['norm2'] if normalize else []) + ['act']
    block = (['up'] if up and self.efficient_upsampling else []) + ['conv2'] + (['down'] if down else [])
    skip = (['up'] if up else []) + ['skip_conv'] + (['down'] if down else []) if self.has_skip else []
    return feats, block, skip

  @nn.compact
  def __call__(self, x: Array, adaptive: Sequence[AdaptivePair] = (), train: bool = False):
    check_norm_type(self.norm)
    if self.resize == 'up':
      layers.check_upsampling('nearest')
    if len(adaptive) != self.num_adaptive:
      raise ValueError(f'{self.name}: expected {self.num_adaptive} adaptive parameter sets, got {len(adaptive)}')
    act = layers.activation(self.activation)
    down = layers.downsample(self.downsampling)
    conv_kw = dict(spectral=self.spectral, eps=self.eps, dtype=self.dtype)
    n1 = num_norm_adaptive(self.norm1_type) if self.norm != 'none' else 0
    n2 = num_norm_adaptive(self.norm) if self.norm != 'none' else 0
    ada_norm1, ada_norm2, ada_skip = adaptive[:n1], adaptive[n1:n1 + n2], adaptive[n1 + n2:]
    feats_layout, block_layout, skip_layout = self._layout()
    size = self.spatial_size

    # An upsampling directly followed by a conv is computed by the conv at the low resolution (same
    # function, fewer operations: see layers.conv3x3_after_upsample); `pending_up` carries it over.
    h, pending_up = x, False
    for i, kind in enumerate(feats_layout):
      name = f'block_feats_{i}'
      if kind == 'norm1':
        h = apply_norm(make_norm(self.norm1_type, size, self.eps, self.bn_momentum, name), h, ada_norm1, train)
      elif kind == 'act':
        h = act(h)
      elif kind == 'up':
        pending_up, size = True, size * 2
      elif kind == 'conv1':
        h = layers.Conv2d(self.out_channels, 3, name=name, upsample_input=pending_up, **conv_kw)(h, train)
        pending_up = False
      elif kind == 'norm2':
        h = apply_norm(make_norm(self.norm, size, self.eps, self.bn_momentum, name), h, ada_norm2, train)
    feats = h

    for i, kind in enumerate(block_layout):
      if kind == 'up':
        pending_up = True
      elif kind == 'conv2':
        h = layers.Conv2d(self.out_channels, 3, name=f'block_{i}', upsample_input=pending_up, **conv_kw)(h, train)
        pending_up = False
      elif kind == 'down':
        h = down(h)

    out = h + self._skip(x, skip_layout, ada_skip, down, conv_kw, train)
    if self.output_aggregated:
      out = layers.split_frames(out, out.shape[0] // self.frames_per_person).mean(axis=1)
    if self.return_feats:
      return out, feats
    return out

  def _skip(self, x: Array, skip_layout, ada_skip, down, conv_kw, train: bool) -> Array:
    """The skip path: (upsampling), an adaptive or plain 1x1 convolution, (downsampling), as laid out."""
    skip, pending_up = x, False
    for i, kind in enumerate(skip_layout):
      if kind == 'up':
        pending_up = True
      elif kind == 'skip_conv' and self.skip_type == 'ada_conv':
        (w, b), = ada_skip
        skip = layers.adaptive_conv1x1(skip, w, b)  # per-pixel: commutes with the upsampling
        if pending_up:
          skip, pending_up = layers.upsample_nearest2x(skip), False
      elif kind == 'skip_conv':
        skip = layers.Conv2d(self.out_channels, 1, name=f'skip_{i}', upsample_input=pending_up, **conv_kw)(skip, train)
        pending_up = False
      elif kind == 'down':
        skip = down(skip)
    return skip
