"""Building blocks of the FSTH networks (docs/fsth.md#networks), NHWC.

Every convolution is spectrally normalised (one power iteration per train-mode call) except the generator's
last one; every activation is a leaky ReLU with slope 0.01. Adaptive instance norm takes its per-channel
mean and scale from a slice of the projected embedding and normalises with the UNBIASED standard deviation
plus eps, as the reference does.
"""

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.models import layers
from bilayer_jax.models.fsth.config import FSTHConfig

Array = jax.Array


def xavier_uniform_conv():
  """The reference's training script re-initialises every convolution weight with xavier_uniform: for an HWIO
  kernel, fan_in = I·k² and fan_out = O·k², as torch.nn.init.xavier_uniform_ computes them."""
  return nn.initializers.xavier_uniform()


class Conv(nn.Module):
  """'same'-padded stride-1 convolution, spectrally normalised unless `spectral` is False."""
  features: int
  kernel_size: int = 3
  spectral: bool = True
  eps: float = 1e-12

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', xavier_uniform_conv(), (k, k, cin, self.features))
    if self.spectral:
      w_mat = jnp.transpose(kernel, (3, 2, 0, 1)).reshape(self.features, -1)
      kernel = layers.spectral_normalize(self, kernel, w_mat, train, self.eps)
    bias = self.param('bias', layers.torch_uniform_init(cin * k * k), (self.features,))
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(k // 2, k // 2)] * 2,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias


def leaky_relu(x: Array, cfg: FSTHConfig) -> Array:
  return jax.nn.leaky_relu(x, cfg.leaky_slope)


def adain(x: Array, mean: Array, scale: Array, eps: float) -> Array:
  """scale * (x - mean_x) / (std_x + eps) + mean, statistics per sample and channel over space; `mean` and
  `scale` are (N, C) and used as given (no +1 on the scale)."""
  n, h, w, c = x.shape
  mu = jnp.mean(x, axis=(1, 2), keepdims=True)
  std = jnp.sqrt(jnp.sum((x - mu) ** 2, axis=(1, 2), keepdims=True) / (h * w - 1))  # unbiased, as torch.std
  return scale[:, None, None, :] * (x - mu) / (std + eps) + mean[:, None, None, :]


def split_adain(psi: Array, channels: Tuple[int, ...]) -> Tuple[Array, ...]:
  """A projection slice as consecutive (N, c) pieces of the given sizes."""
  pieces, start = [], 0
  for c in channels:
    pieces.append(psi[:, start:start + c])
    start += c
  return tuple(pieces)


class ResBlockDown(nn.Module):
  """(1x1 conv -> avg pool) + (lrelu -> conv -> lrelu -> conv -> avg pool); no normalisation."""
  cfg: FSTHConfig
  features: int
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    eps = self.cfg.spectral_eps
    skip = layers.avg_pool2x(Conv(self.features, 1, eps=eps, name='conv_l1')(x, train))
    out = Conv(self.features, self.kernel_size, eps=eps, name='conv_r1')(leaky_relu(x, self.cfg), train)
    out = Conv(self.features, self.kernel_size, eps=eps, name='conv_r2')(leaky_relu(out, self.cfg), train)
    return skip + layers.avg_pool2x(out)


class SelfAttention(nn.Module):
  """x + gamma * (h A): f, g are 1x1 convs to C/8, h to C; A = softmax over the QUERY axis of f^T g (each
  column of A sums to one), gamma starts at 0."""
  cfg: FSTHConfig

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    n, hh, ww, c = x.shape
    eps = self.cfg.spectral_eps
    f = Conv(c // 8, 1, eps=eps, name='conv_f')(x, train).reshape(n, hh * ww, c // 8)
    g = Conv(c // 8, 1, eps=eps, name='conv_g')(x, train).reshape(n, hh * ww, c // 8)
    h = Conv(c, 1, eps=eps, name='conv_h')(x, train).reshape(n, hh * ww, c)
    attention = jax.nn.softmax(jnp.einsum('nic,njc->nij', f, g), axis=1)  # (N, i, j), sums over i
    out = jnp.einsum('nic,nij->njc', h, attention).reshape(n, hh, ww, c)
    gamma = self.param('gamma', nn.initializers.zeros, (1,))
    return gamma * out + x


class ResBlock(nn.Module):
  """Identity + (AdaIN -> lrelu -> conv -> AdaIN -> lrelu -> conv); psi slice [mean1 | std1 | mean2 | std2]."""
  cfg: FSTHConfig

  @nn.compact
  def __call__(self, x: Array, psi: Array, train: bool = False) -> Array:
    c, eps = x.shape[-1], self.cfg.adain_eps
    mean1, std1, mean2, std2 = split_adain(psi, (c, c, c, c))
    out = Conv(c, eps=self.cfg.spectral_eps, name='conv1')(leaky_relu(adain(x, mean1, std1, eps), self.cfg), train)
    out = Conv(c, eps=self.cfg.spectral_eps, name='conv2')(leaky_relu(adain(out, mean2, std2, eps), self.cfg),
                                                           train)
    return out + x


class ResBlockD(nn.Module):
  """Identity + (conv -> lrelu -> conv): the discriminator's last block."""
  cfg: FSTHConfig

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    c, eps = x.shape[-1], self.cfg.spectral_eps
    out = Conv(c, eps=eps, name='conv1')(x, train)
    return Conv(c, eps=eps, name='conv2')(leaky_relu(out, self.cfg), train) + x


def upsample_bilinear(x: Array, size: Optional[int] = None) -> Array:
  """Bilinear upsampling with half-pixel centres (PyTorch's align_corners=False): x2, or to `size`."""
  n, h, w, c = x.shape
  out = size or 2 * h
  return jax.image.resize(x, (n, out, out if size else 2 * w, c), 'bilinear', antialias=False)


class ResBlockUp(nn.Module):
  """(upsample -> 1x1 conv) + (AdaIN -> lrelu -> upsample -> conv -> AdaIN -> lrelu -> conv); psi slice
  [mean1 (in) | std1 (in) | mean2 (out) | std2 (out)]."""
  cfg: FSTHConfig
  features: int
  out_size: Optional[int] = None  # None: x2

  @nn.compact
  def __call__(self, x: Array, psi: Array, train: bool = False) -> Array:
    cin, cout, eps = x.shape[-1], self.features, self.cfg.adain_eps
    mean1, std1, mean2, std2 = split_adain(psi, (cin, cin, cout, cout))
    skip = Conv(cout, 1, eps=self.cfg.spectral_eps, name='conv_l1')(upsample_bilinear(x, self.out_size), train)
    out = upsample_bilinear(leaky_relu(adain(x, mean1, std1, eps), self.cfg), self.out_size)
    out = Conv(cout, eps=self.cfg.spectral_eps, name='conv_r1')(out, train)
    out = Conv(cout, eps=self.cfg.spectral_eps, name='conv_r2')(leaky_relu(adain(out, mean2, std2, eps), self.cfg),
                                                               train)
    return out + skip


class InstanceNorm(nn.Module):
  """Instance norm with a learned per-channel scale and shift (biased variance, no running statistics)."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    mu = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean((x - mu) ** 2, axis=(1, 2), keepdims=True)
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    return (x - mu) * jax.lax.rsqrt(var + self.eps) * scale + bias


def pad_to(x: Array, amount: int) -> Array:
  """Zero padding of `amount` pixels on each side of H and W."""
  return jnp.pad(x, ((0, 0), (amount, amount), (amount, amount), (0, 0))) if amount else x
