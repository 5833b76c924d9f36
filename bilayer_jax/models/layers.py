"""Primitive layers of the bi-layer networks, NHWC, with the original's exact numerics.

* `Conv2d` / `Dense`: PyTorch-default initialisation and the original's spectral norm (PyTorch's
  hook-based `SpectralNorm`: persistent u, v; one power iteration per train-mode call; eps 1e-7).
* `BatchNorm`: PyTorch BatchNorm2d semantics (biased batch variance for normalising, unbiased variance
  stored, configurable momentum, `num_batches_tracked`).
* Stateless helpers: activations, nearest x2 upsampling, 2x2 average pooling, per-sample 1x1 convs.

Variable collections: `params` (kernels, biases, affine BN), `batch_stats` (BN running statistics) and
`spectral` (spectral-norm u, v). Spectral-norm power iteration runs only when `train=True` AND the
`spectral` collection is mutable; that is how the standing-statistics pass (BN in train mode, everything
else in eval mode) is expressed: apply with `train=True, mutable=['batch_stats']`.
"""

import functools
import math
from typing import Any, Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any


def torch_uniform_init(fan_in: int) -> Callable[..., Array]:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for weights (kaiming a=sqrt(5)) and biases."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _l2_normalize(x: Array, eps: float) -> Array:
  # torch.nn.functional.normalize: x / max(||x||, eps).
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def _random_unit_vector(key, size: int, eps: float) -> Array:
  return _l2_normalize(jax.random.normal(key, (size,), jnp.float32), eps)


def spectral_normalize(module: nn.Module, kernel: Array, weight_matrix: Array, train: bool,
                       eps: float) -> Array:
  """Divides `kernel` by the spectral-norm estimate sigma = u . (W v), updating u, v in train mode.

  Args:
    module: the module that owns the `spectral` variables `u` (out dim) and `v` (in dim, PyTorch order).
    kernel: the parameter to normalise (any layout).
    weight_matrix: the same parameter as PyTorch's (out, -1) matrix.
    train: whether this call is a train-mode call (power iteration if `spectral` is mutable).
    eps: normalisation epsilon of the power iteration.
  """
  out_dim, in_dim = weight_matrix.shape
  u = module.variable('spectral', 'u', lambda: _random_unit_vector(module.make_rng('params'), out_dim, eps))
  v = module.variable('spectral', 'v', lambda: _random_unit_vector(module.make_rng('params'), in_dim, eps))
  # PyTorch starts from random unit u, v, which can give sigma ~ 0 or < 0 and NaN/garbage outputs of a
  # fresh network in eval mode. We run 3 power iterations at initialisation so that a fresh model is
  # usable in eval mode too (the same remedy the parity fixtures apply); training behaviour is unchanged.
  iterations = 3 if module.is_initializing() else int(train and module.is_mutable_collection('spectral'))
  for _ in range(iterations):
    # The power iteration runs without gradient, as in PyTorch (it happens under no_grad there).
    w = jax.lax.stop_gradient(weight_matrix)
    v_new = _l2_normalize(w.T @ u.value, eps)
    u_new = _l2_normalize(w @ v_new, eps)
    u.value, v.value = u_new, v_new
  u_vec = jax.lax.stop_gradient(u.value)
  v_vec = jax.lax.stop_gradient(v.value)
  sigma = jnp.dot(u_vec, weight_matrix @ v_vec)
  return kernel / sigma


# Rows r of a 3x3 kernel that act on each of the 2 low-resolution taps of output phase a (see below).
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)


def upsample_phase_kernel(kernel):
  """The 2x2 HWIO kernel of `conv3x3_after_upsample` for a 3x3 HWIO kernel: output channels ordered
  (a, b, Cout) for output phase (a, b). numpy in, numpy out (the PyTorch FrameNet); jax in, jax out."""
  xp = np if isinstance(kernel, np.ndarray) else jnp
  taps = xp.asarray(_PHASE_TAPS, kernel.dtype)
  # (2 [a], 2 [b], 2 [ty], 2 [tx], Cin, Cout) -> (2 [ty], 2 [tx], Cin, (a, b, Cout)).
  phased = xp.einsum('ayr,bxc,rcio->yxiabo', taps, taps, kernel)
  return phased.reshape(2, 2, kernel.shape[2], 4 * kernel.shape[-1])


def conv3x3_after_upsample(x: Array, kernel: Array) -> Array:
  """conv3x3(upsample_nearest2x(x)) with 'same' zero padding, computed at the LOW resolution.

  Output pixel (2i + a, 2j + b) only sees input rows {i - 1, i} (a = 0) or {i, i + 1} (a = 1), and likewise
  columns, so each of the 4 output phases is a 2x2 convolution of x with summed kernel taps. One 2x2 conv
  with 4x the output channels over x padded by one pixel computes all phases: 16 instead of 36 multiply-adds
  per input pixel and channel pair, exactly the same function (up to float summation order).
  """
  n, h, w, _ = x.shape
  cout = kernel.shape[-1]
  z = jax.lax.conv_general_dilated(x, upsample_phase_kernel(kernel), window_strides=(1, 1), padding=[(1, 1), (1, 1)],
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # (N, H + 1, W + 1, 4 Cout)
  z = z.reshape(n, h + 1, w + 1, 2, 2, cout)
  rows = [jnp.stack([z[:, a:a + h, b:b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
  y = jnp.stack(rows, axis=2)  # (N, H, 2 [a], W, 2 [b], Cout)
  return y.reshape(n, 2 * h, 2 * w, cout)


class Conv2d(nn.Module):
  """Stride-1 convolution with 'same' padding (k // 2), NHWC input, HWIO kernel.

  With `upsample_input`, computes conv(upsample_nearest2x(x)); in eval mode without materialising the
  upsampled input (3x3: `conv3x3_after_upsample`; 1x1: conv then upsample, which is the same function).
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  spectral: bool = True
  eps: float = 1e-7
  dtype: Dtype = jnp.float32
  upsample_input: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool = False, weights_only: bool = False):
    """Returns conv(x); with `weights_only`, the effective (kernel, bias) instead (x gives the shape)."""
    k, cin = self.kernel_size, x.shape[-1]
    fan_in = cin * k * k
    kernel = self.param('kernel', torch_uniform_init(fan_in), (k, k, cin, self.features))
    if self.spectral:
      w_mat = jnp.transpose(kernel, (3, 2, 0, 1)).reshape(self.features, -1)
      kernel = spectral_normalize(self, kernel, w_mat, train, self.eps)
    if weights_only:
      bias = self.param('bias', torch_uniform_init(fan_in), (self.features,)) if self.use_bias else None
      return kernel, bias
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.upsample_input and k == 3 and not train:
      y = conv3x3_after_upsample(x, kernel)
    elif self.upsample_input and k == 3:
      # Training keeps the original's order of operations: the texture-path gradients of a step are
      # sensitive to the different rounding of the low-resolution form (measured: 1% on a few tensors).
      y = jax.lax.conv_general_dilated(upsample_nearest2x(x), kernel, window_strides=(1, 1),
                                       padding=[(1, 1), (1, 1)], dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    else:
      y = jax.lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding=[(k // 2, k // 2)] * 2,
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      if self.upsample_input and k == 1:
        y = upsample_nearest2x(y)
      elif self.upsample_input:
        raise ValueError(f'upsample_input supports 1x1 and 3x3 kernels, not {k}x{k}')
    if self.use_bias:
      bias = self.param('bias', torch_uniform_init(fan_in), (self.features,))
      y = y + bias.astype(self.dtype)
    return y


class Dense(nn.Module):
  """Linear layer with a (in, out) kernel and optional spectral norm."""
  features: int
  spectral: bool = True
  eps: float = 1e-7
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    cin = x.shape[-1]
    kernel = self.param('kernel', torch_uniform_init(cin), (cin, self.features))
    if self.spectral:
      kernel = spectral_normalize(self, kernel, kernel.T, train, self.eps)
    bias = self.param('bias', torch_uniform_init(cin), (self.features,))
    return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class BatchNorm(nn.Module):
  """BatchNorm2d with PyTorch semantics over all axes but the last (channels).

  Train mode normalises with the biased batch variance and stores the unbiased one; running statistics
  are updated as `(1 - momentum) * old + momentum * batch` (momentum 1.0 in the original: the last batch).
  Under `jax.jit` with a batch-sharded input, the statistics are over the global batch (SyncBN).
  Statistics are computed in at least float32 (float32 for bfloat16 inputs, float64 for a float64 run).
  """
  affine: bool = True
  eps: float = 1e-7
  momentum: float = 1.0

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    channels = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (channels,), jnp.float32)
    batches_tracked = self.variable('batch_stats', 'num_batches_tracked', jnp.zeros, (), jnp.int32)
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if self.affine:
      scale = self.param('scale', nn.initializers.ones, (channels,))
      bias = self.param('bias', nn.initializers.zeros, (channels,))
    if not train:
      y = (x32 - running_mean.value) * jax.lax.rsqrt(running_var.value + self.eps)
      return (y * scale + bias if self.affine else y).astype(x.dtype)
    if not self.affine:
      scale, bias = jnp.ones((channels,), x32.dtype), jnp.zeros((channels,), x32.dtype)
    y, mean, var = batch_norm_train(x32, scale, bias, self.eps)
    if self.is_mutable_collection('batch_stats') and not self.is_initializing():
      count = x.size // channels
      unbiased = var * (count / max(count - 1, 1))
      running_mean.value = (1.0 - self.momentum) * running_mean.value + self.momentum * mean
      running_var.value = (1.0 - self.momentum) * running_var.value + self.momentum * unbiased
      batches_tracked.value = batches_tracked.value + 1
    return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: Array, scale: Array, bias: Array, eps: float) -> Tuple[Array, Array, Array]:
  """Train-mode batch norm over all axes but the last: (y, batch mean, biased batch variance).

  The statistics are two-pass (mean, then the mean squared deviation), as PyTorch computes them. The
  backward is the closed form PyTorch's BatchNorm uses: two reductions, sum(g) and sum(g * x_hat), which
  are also the bias and scale gradients, instead of autodiff's differentiating the forward's reductions one
  by one. Same function and gradients (tests/test_layers.py checks them against autodiff in float64); it
  exists because XLA:CPU's large reductions are slow and the step has fewer of them this way
  (docs/benchmarks.md#cpu-training-step-profile-2026-12-07).
  """
  return _batch_norm_forward(x, scale, bias, eps)[0]


def _batch_norm_forward(x, scale, bias, eps):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  centred = x - mean
  var = jnp.mean(jnp.square(centred), axes)
  inv_std = jax.lax.rsqrt(var + eps)
  return (centred * inv_std * scale + bias, mean, var), (x, mean, inv_std, scale)


def _batch_norm_backward(eps, residuals, cotangents):
  del eps  # inv_std already holds it.
  x, mean, inv_std, scale = residuals
  g_y, g_mean, g_var = cotangents
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  centred = x - mean
  x_hat = centred * inv_std
  g_bias = jnp.sum(g_y, axes)
  g_scale = jnp.sum(g_y * x_hat, axes)
  g_x = (scale * inv_std / count) * (count * g_y - g_bias - x_hat * g_scale)
  # The statistics' own cotangents (zero in a training step, whose running statistics are not differentiated).
  g_x = g_x + g_mean / count + centred * (2.0 * g_var / count)
  return g_x, g_scale, g_bias


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_backward)


def activation(name: str) -> Callable[[Array], Array]:
  if name == 'leakyrelu':
    return lambda x: jax.nn.leaky_relu(x, 0.2)
  if name == 'relu':
    return jax.nn.relu
  raise ValueError(f"unsupported activation type {name!r}: expected 'leakyrelu' or 'relu'")


def upsample_nearest2x(x: Array) -> Array:
  """Nearest-neighbour x2 upsampling of an NHWC tensor."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2x(x: Array) -> Array:
  """AvgPool2d(2) of an NHWC tensor (odd trailing rows/cols dropped, as PyTorch does)."""
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def max_pool2x(x: Array) -> Array:
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def downsample(name: str) -> Callable[[Array], Array]:
  if name == 'avgpool':
    return avg_pool2x
  if name == 'maxpool':
    return max_pool2x
  raise ValueError(f"unsupported downsampling type {name!r}: expected 'avgpool' or 'maxpool'")


def check_upsampling(name: str) -> None:
  if name != 'nearest':
    raise ValueError(f"unsupported upsampling type {name!r}: expected 'nearest'")


def split_frames(x: Array, batch: int) -> Array:
  """(B*T, ...) -> (B, T, ...) where B is the number of identities the adaptive parameters are for."""
  if x.shape[0] % batch:
    raise ValueError(f'batch of {x.shape[0]} frames is not a multiple of {batch} identities')
  return x.reshape(batch, x.shape[0] // batch, *x.shape[1:])


def adaptive_conv1x1(x: Array, weight: Array, bias: Array) -> Array:
  """Per-identity 1x1 convolution (the original's AdaptiveConv2d with a 1x1 kernel).

  Args:
    x: (B*T, H, W, Ci) features; the weights of identity b are used for its T frames.
    weight: (B, Co, Ci) per-identity weights (the original's (B, Co, Ci, 1, 1) squeezed).
    bias: (B, Co) per-identity biases.
  """
  b = weight.shape[0]
  xs = split_frames(x, b)
  y = jnp.einsum('bthwi,boi->bthwo', xs, weight.astype(x.dtype)) + bias.astype(x.dtype)[:, None, None, None]
  return y.reshape(x.shape[:-1] + (weight.shape[1],))


def modulate(x: Array, scale: Array, shift: Array) -> Array:
  """x * scale + shift with per-identity (B, ...) parameters broadcast over the T frames of x (B*T, ...)."""
  xs = split_frames(x, scale.shape[0])
  if scale.ndim == 2:  # (B, C) -> (B, 1, 1, C): one value per channel.
    scale, shift = scale[:, None, None, :], shift[:, None, None, :]
  y = xs * scale.astype(x.dtype)[:, None] + shift.astype(x.dtype)[:, None]
  return y.reshape(x.shape)
