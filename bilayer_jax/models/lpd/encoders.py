"""The LPD identity and pose encoders: torchvision's ResNeXt-50 (32x4d) and MobileNetV2, NHWC.

The official embedder builds both with torchvision's definitions, randomly initialised and trained with
the rest (no pretrained weights): BatchNorm (eps 1e-5, momentum 0.1), ResNet v1.5 (the stride on the 3x3
convolution), MobileNetV2 with ReLU6 and a Dropout(0.2) before its classifier. Module names follow the
PyTorch module paths with indices attached by underscores (`layer1_0/conv1` <-> `layer1.0.conv1`), the
house rule of `bilayer_jax.convert.torch_names`, so checkpoints convert mechanically.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.models import layers
from bilayer_jax.models.lpd.config import LPDConfig

Array = jax.Array
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1


class Conv(nn.Module):
  """Bias-free convolution with PyTorch's padding (k - 1) // 2, stride and groups; torchvision's kaiming
  normal (fan_out) initialisation."""
  features: int
  kernel_size: int
  stride: int = 1
  groups: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, pad = self.kernel_size, (self.kernel_size - 1) // 2
    init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    kernel = self.param('kernel', init, (k, k, x.shape[-1] // self.groups, self.features)).astype(x.dtype)
    if 1 < self.groups < x.shape[-1]:
      return grouped_conv(x, kernel, self.stride, self.groups)
    return jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), [(pad, pad)] * 2,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=self.groups)


def grouped_conv(x: Array, kernel: Array, stride: int, groups: int) -> Array:
  """A grouped convolution (ResNeXt's) as k² shifted views and one einsum batched over the groups: the same
  function as `conv_general_dilated(feature_group_count=groups)`, which XLA:CPU runs at ~5 GFLOP/s
  (docs/benchmarks.md: 29 s of a 35 s official-size step) against ~200 for dense convolutions."""
  k, pad = kernel.shape[0], (kernel.shape[0] - 1) // 2
  n, h, w, c = x.shape
  out_h, out_w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  views = [xp[:, dy:dy + stride * (out_h - 1) + 1:stride, dx:dx + stride * (out_w - 1) + 1:stride]
           for dy in range(k) for dx in range(k)]
  patches = jnp.stack(views, axis=3).reshape(n, out_h, out_w, k * k, groups, c // groups)
  weights = kernel.reshape(k * k, c // groups, groups, kernel.shape[-1] // groups)
  out = jnp.einsum('nhwkgc,kcgd->nhwgd', patches, weights)
  return out.reshape(n, out_h, out_w, kernel.shape[-1])


def batch_norm(name: str) -> layers.BatchNorm:
  return layers.BatchNorm(eps=_BN_EPS, momentum=_BN_MOMENTUM, name=name)


def max_pool3x3s2(x: Array) -> Array:
  """MaxPool2d(3, stride 2, padding 1): padding never wins the max."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Bottleneck(nn.Module):
  """ResNeXt bottleneck: 1x1 -> grouped 3x3 (stride) -> 1x1 (x4), BN after each, projection shortcut when the
  shape changes."""
  planes: int
  stride: int
  width: int
  groups: int

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    out = jax.nn.relu(batch_norm('bn1')(Conv(self.width, 1, name='conv1')(x), train))
    out = Conv(self.width, 3, self.stride, self.groups, name='conv2')(out)
    out = jax.nn.relu(batch_norm('bn2')(out, train))
    out = batch_norm('bn3')(Conv(4 * self.planes, 1, name='conv3')(out), train)
    if self.stride != 1 or x.shape[-1] != 4 * self.planes:
      x = batch_norm('downsample_1')(Conv(4 * self.planes, 1, self.stride, name='downsample_0')(x), train)
    return jax.nn.relu(out + x)


class IdentityEncoder(nn.Module):
  """(N, H, W, 3) frames in [0, 1] -> (N, identity_dim): ResNeXt with `identity_dim` classes."""
  cfg: LPDConfig

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    cfg = self.cfg
    x = jax.nn.relu(batch_norm('bn1')(Conv(cfg.resnext_stem, 7, 2, name='conv1')(x), train))
    x = max_pool3x3s2(x)
    for stage, (planes, depth) in enumerate(zip(cfg.resnext_planes, cfg.resnext_depths)):
      width = planes * cfg.resnext_width_per_group // 64 * cfg.resnext_groups
      for index in range(depth):
        stride = 2 if stage > 0 and index == 0 else 1
        x = Bottleneck(planes, stride, width, cfg.resnext_groups, name=f'layer{stage + 1}_{index}')(x, train)
    return layers.Dense(cfg.identity_dim, spectral=False, name='fc')(jnp.mean(x, axis=(1, 2)))


class ConvBNReLU6(nn.Module):
  """torchvision's Conv2dNormActivation with ReLU6 (children 0: conv, 1: BN)."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  depthwise: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    groups = x.shape[-1] if self.depthwise else 1
    x = Conv(self.features, self.kernel_size, self.stride, groups, name='0')(x)
    return jax.nn.relu6(batch_norm('1')(x, train))


class InvertedResidual(nn.Module):
  """MobileNetV2 block: [1x1 expand] -> depthwise 3x3 (stride) -> linear 1x1, residual when shapes match.
  Children as torchvision's `conv` Sequential: conv_0 (expand), conv_1 (depthwise), conv_2, conv_3 (BN); no
  expansion shifts the indices down by one."""
  features: int
  stride: int
  expansion: int

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    hidden = int(round(x.shape[-1] * self.expansion))
    out, index = x, 0
    if self.expansion != 1:
      out = ConvBNReLU6(hidden, 1, name='conv_0')(out, train)
      index = 1
    out = ConvBNReLU6(hidden, 3, self.stride, depthwise=True, name=f'conv_{index}')(out, train)
    out = Conv(self.features, 1, name=f'conv_{index + 1}')(out)
    out = batch_norm(f'conv_{index + 2}')(out, train)
    return x + out if self.stride == 1 and x.shape[-1] == self.features else out


class Linear(nn.Module):
  """MobileNetV2's classifier layer: N(0, 0.01²) weights, zero bias (torchvision's init)."""
  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', nn.initializers.normal(0.01), (x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)


class PoseEncoder(nn.Module):
  """(N, H, W, 3) frames in [0, 1] -> (N, pose_dim): MobileNetV2 with `pose_dim` classes.

  In train mode the classifier's dropout draws from the 'dropout' rng, or applies `dropout_keep` (N, C) when
  given (the parity tests replay the reference's mask).
  """
  cfg: LPDConfig

  @nn.compact
  def __call__(self, x: Array, train: bool = False, dropout_keep: Optional[Array] = None) -> Array:
    cfg = self.cfg
    x = ConvBNReLU6(cfg.mobilenet_stem, 3, 2, name='features_0')(x, train)
    index = 1
    for expansion, channels, repeats, stride in cfg.mobilenet_stages:
      for i in range(repeats):
        x = InvertedResidual(channels, stride if i == 0 else 1, expansion, name=f'features_{index}')(x, train)
        index += 1
    x = ConvBNReLU6(cfg.mobilenet_last, 1, name=f'features_{index}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if train:
      x = self._dropout(x, dropout_keep)
    return Linear(cfg.pose_dim, name='classifier_1')(x)

  def _dropout(self, x: Array, keep: Optional[Array]) -> Array:
    rate = self.cfg.pose_dropout
    if keep is None:
      keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)
