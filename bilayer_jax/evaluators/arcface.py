"""ArcFace IR-SE-50 (InsightFace) identity embeddings for the paper's CSIM metric (`csim_arcface`).

The network is InsightFace_Pytorch's `Backbone(num_layers=50, drop_ratio=0.6, mode='ir_se')` in eval mode,
loaded from its PyTorch state dict (`model_ir_se50.pth`, which the original ships as
`pretrained_weights/csim/insight_face.pth`). Input: (N, 112, 112, 3) RGB in [-1, 1]; output: L2-normalised
(N, 512) embeddings.

Alignment, as the original's CSIM: five points (eye centres = means of the iBUG eye contours 36-41 and 42-47,
nose tip 30, mouth corners 48 and 54) give a least-squares similarity (Umeyama, skimage) from the standard
112x112 ArcFace template into the image, and the image is bilinearly resampled through it with zeros outside.

Sampling convention: pixel centres sit at integer coordinates in both the keypoints and the template, so
output pixel (row i, col j) takes the image at T(j, i); this is cv2.warpAffine / skimage.transform.warp, the
convention the ArcFace template and the landmark detectors use. The original instead converts T into an
`affine_grid` theta with a formula that is only approximate under either torch convention: with
align_corners=True (torch < 1.3) it divides by 112 and W where 111 and W - 1 are exact; under today's default,
align_corners=False, it samples (T00 + T01 - 1) / 2 pixels right of and (T10 + T11 - 1) / 2 pixels below the
exact point, a fraction of a pixel at the face scales of 256x256 crops. We use the exact warp, identical to
`affine_grid` + `grid_sample` (align_corners=False, zeros padding) with theta row 0 =
[T00 Wo/W, T01 Ho/W, (2 T02 + T00 (Wo-1) + T01 (Ho-1) + 1)/W - 1] (row 1 likewise with H), Wo = Ho = 112.
"""

import os
import pathlib
from typing import Any, Dict, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from skimage import transform as sktransform

from bilayer_jax import errors
from bilayer_jax import model_io

Array = jax.Array

ARCFACE_SIZE = 112
EMBEDDING_SIZE = 512
# The standard ArcFace 5-point template (x, y) in 112x112 pixel coordinates: eyes, nose, mouth corners.
TEMPLATE_112 = np.array([[35.343697, 51.6963], [76.453766, 51.5014], [56.029396, 71.7366],
                         [39.14085, 92.3655], [73.18488, 92.2041]], np.float32)
# (in_channels, depth, units) per stage of IR-50; each stage's first unit has stride 2.
STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
BN_EPS = 1e-5  # torch's BatchNorm default
SE_REDUCTION = 16
FINAL_SIDE = ARCFACE_SIZE // 16  # four stride-2 stages: the last map is 7x7


def unit_specs() -> List[Tuple[int, int, int]]:
  """(in_channels, depth, stride) of the 24 body units, in `body.<i>` order."""
  return [(in_ch if u == 0 else depth, depth, 2 if u == 0 else 1)
          for in_ch, depth, units in STAGES for u in range(units)]


class PReLU(nn.Module):
  """Per-channel PReLU as torch.nn.PReLU(C) (flax's PReLU has a single slope)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    alpha = self.param('alpha', nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, alpha * x)


def _batch_norm(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name=name)


class BottleneckIRSE(nn.Module):
  """InsightFace's bottleneck_IR_SE: BN-conv-PReLU-conv(stride)-BN-SE plus a (projected) shortcut."""

  depth: int
  stride: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s = self.stride
    if x.shape[-1] == self.depth:
      shortcut = x[:, ::s, ::s]  # MaxPool2d(kernel 1, stride s) is plain subsampling
    else:
      shortcut = nn.Conv(self.depth, (1, 1), (s, s), padding='VALID', use_bias=False,
                         precision=self.precision, name='shortcut_conv')(x)
      shortcut = _batch_norm('shortcut_bn')(shortcut)
    r = _batch_norm('bn_in')(x)
    r = nn.Conv(self.depth, (3, 3), padding=1, use_bias=False, precision=self.precision, name='conv1')(r)
    r = PReLU(name='prelu')(r)
    r = nn.Conv(self.depth, (3, 3), (s, s), padding=1, use_bias=False, precision=self.precision,
                name='conv2')(r)
    r = _batch_norm('bn_out')(r)
    # Squeeze-and-excitation: channel gates from the global average.
    gate = r.mean(axis=(1, 2), keepdims=True)
    gate = nn.Conv(self.depth // SE_REDUCTION, (1, 1), use_bias=False, precision=self.precision,
                   name='se_fc1')(gate)
    gate = nn.Conv(self.depth, (1, 1), use_bias=False, precision=self.precision,
                   name='se_fc2')(jax.nn.relu(gate))
    return r * jax.nn.sigmoid(gate) + shortcut


class IResNetSE50(nn.Module):
  """ArcFace IR-SE-50 in eval mode: (N, 112, 112, 3) in [-1, 1] -> L2-normalised (N, 512) embeddings.

  The `embedding` Dense kernel takes the final (7, 7, 512) map flattened in NHWC order; torch flattens NCHW,
  so `load_arcface_weights` permutes the rows of the torch Linear accordingly. Convolutions run at HIGHEST
  precision by default so the metric does not depend on TF32 defaults of the accelerator.
  """

  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: Array) -> Array:
    if images.shape[1:] != (ARCFACE_SIZE, ARCFACE_SIZE, 3):
      raise ValueError(f'IR-SE-50 takes (N, {ARCFACE_SIZE}, {ARCFACE_SIZE}, 3) faces, got {images.shape}')
    x = nn.Conv(64, (3, 3), padding=1, use_bias=False, precision=self.precision, name='input_conv')(images)
    x = PReLU(name='input_prelu')(_batch_norm('input_bn')(x))
    for i, (_, depth, stride) in enumerate(unit_specs()):
      x = BottleneckIRSE(depth, stride, self.precision, name=f'body_{i}')(x)
    x = _batch_norm('output_bn')(x)  # Dropout follows in torch: identity in eval mode
    x = nn.Dense(EMBEDDING_SIZE, precision=self.precision, name='embedding')(x.reshape(x.shape[0], -1))
    x = _batch_norm('embedding_bn')(x)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ArcFaceWeightsError(errors.UserError, ValueError):
  """The ArcFace weight file is unreadable or not IR-SE-50 weights (keys missing, misshapen or unexpected)."""


class ArcFaceWeightsNotFoundError(ArcFaceWeightsError, FileNotFoundError):
  """The ArcFace weight file does not exist."""


# (torch module prefix, flax module path, kind, dims); dims are (out, in, k) for convs, (out, in) for
# Linear and (channels,) for BatchNorm / PReLU.
_Layer = Tuple[str, Tuple[str, ...], str, Tuple[int, ...]]


def _torch_layout() -> List[_Layer]:
  layers = [('input_layer.0', ('input_conv',), 'conv', (64, 3, 3)),
            ('input_layer.1', ('input_bn',), 'bn', (64,)),
            ('input_layer.2', ('input_prelu',), 'prelu', (64,))]
  for i, (in_ch, depth, _) in enumerate(unit_specs()):
    t, f = f'body.{i}', f'body_{i}'
    if in_ch != depth:
      layers += [(f'{t}.shortcut_layer.0', (f, 'shortcut_conv'), 'conv', (depth, in_ch, 1)),
                 (f'{t}.shortcut_layer.1', (f, 'shortcut_bn'), 'bn', (depth,))]
    layers += [(f'{t}.res_layer.0', (f, 'bn_in'), 'bn', (in_ch,)),
               (f'{t}.res_layer.1', (f, 'conv1'), 'conv', (depth, in_ch, 3)),
               (f'{t}.res_layer.2', (f, 'prelu'), 'prelu', (depth,)),
               (f'{t}.res_layer.3', (f, 'conv2'), 'conv', (depth, depth, 3)),
               (f'{t}.res_layer.4', (f, 'bn_out'), 'bn', (depth,)),
               (f'{t}.res_layer.5.fc1', (f, 'se_fc1'), 'conv', (depth // SE_REDUCTION, depth, 1)),
               (f'{t}.res_layer.5.fc2', (f, 'se_fc2'), 'conv', (depth, depth // SE_REDUCTION, 1))]
  layers += [('output_layer.0', ('output_bn',), 'bn', (512,)),
             ('output_layer.3', ('embedding',), 'linear', (EMBEDDING_SIZE, 512 * FINAL_SIDE**2)),
             ('output_layer.4', ('embedding_bn',), 'bn', (EMBEDDING_SIZE,))]
  return layers


def _expected_shapes(kind: str, dims: Tuple[int, ...]) -> Dict[str, Tuple[int, ...]]:
  if kind == 'conv':
    out, in_ch, k = dims
    return {'weight': (out, in_ch, k, k)}
  if kind == 'linear':
    return {'weight': dims, 'bias': dims[:1]}
  if kind == 'prelu':
    return {'weight': dims}
  return {leaf: dims for leaf in ('weight', 'bias', 'running_mean', 'running_var')}


def _convert(kind: str, t: Dict[str, np.ndarray]) -> Dict[str, Dict[str, np.ndarray]]:
  """torch tensors of one layer -> {'params': ..., 'batch_stats': ...} leaves of its flax module."""
  if kind == 'conv':
    return {'params': {'kernel': t['weight'].transpose(2, 3, 1, 0)}}
  if kind == 'prelu':
    return {'params': {'alpha': t['weight']}}
  if kind == 'linear':
    out, flat = t['weight'].shape
    # Rows indexed (c, h, w) by torch's NCHW flatten -> (h, w, c) for our NHWC flatten.
    kernel = t['weight'].reshape(out, 512, FINAL_SIDE, FINAL_SIDE).transpose(2, 3, 1, 0).reshape(flat, out)
    return {'params': {'kernel': kernel, 'bias': t['bias']}}
  return {'params': {'scale': t['weight'], 'bias': t['bias']},
          'batch_stats': {'mean': t['running_mean'], 'var': t['running_var']}}


def arcface_variables_from_state_dict(state: Dict[str, np.ndarray], source: str = '') -> Dict[str, Any]:
  """InsightFace IR-SE-50 torch state dict (as numpy) -> flax variables of `IResNetSE50`.

  Raises:
    ArcFaceWeightsError: keys missing, of the wrong shape, or unexpected (each named, up to 20 of them).
  """
  variables: Dict[str, Any] = {'params': {}, 'batch_stats': {}}
  problems, used = [], set()
  for prefix, path, kind, dims in _torch_layout():
    tensors = {}
    for leaf, shape in _expected_shapes(kind, dims).items():
      key = f'{prefix}.{leaf}'
      used.add(key)
      array = model_io.checked_array(state, key, shape, problems)
      if array is not None:
        tensors[leaf] = array
    if problems:
      continue  # keep collecting problems; nothing will be returned
    for collection, leaves in _convert(kind, tensors).items():
      node = variables[collection]
      for name in path:
        node = node.setdefault(name, {})
      node.update(leaves)
  unexpected = sorted(k for k in state if k not in used and not k.endswith('num_batches_tracked'))
  problems += [f'unexpected key {key!r}' for key in unexpected]
  if problems:
    shown = problems[:20] + ([f'... and {len(problems) - 20} more'] if len(problems) > 20 else [])
    raise ArcFaceWeightsError(f'{source or "state dict"}: not ArcFace IR-SE-50 weights (InsightFace_Pytorch '
                              "Backbone(50, mode='ir_se')):\n  " + '\n  '.join(shown))
  return variables


def load_arcface_weights(path: os.PathLike) -> Dict[str, Any]:
  """Reads an InsightFace_Pytorch IR-SE-50 state dict (.pth) into flax variables of `IResNetSE50`.

  Raises:
    ArcFaceWeightsNotFoundError: the file does not exist (says where to get it).
    ArcFaceWeightsError: the file is not an IR-SE-50 state dict (names the offending keys and shapes).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ArcFaceWeightsNotFoundError(
        f'ArcFace weights {path} not found. csim_arcface needs the InsightFace IR-SE-50 state dict: '
        'model_ir_se50.pth from TreB1eN/InsightFace_Pytorch (the original bi-layer code ships the same file '
        'as pretrained_weights/csim/insight_face.pth); pass its path with --config.eval.arcface_weights=PATH.')
  import torch  # pylint: disable=g-import-not-at-top
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    # weights_only refuses pickled modules and torch raises several types for corrupt files.
    raise ArcFaceWeightsError(f'{path}: cannot be read as a PyTorch state dict ({e})') from e
  if not isinstance(state, dict):
    raise ArcFaceWeightsError(f'{path}: expected a state dict, found {type(state).__name__}')
  return arcface_variables_from_state_dict({k: v.numpy() for k, v in state.items()}, str(path))


def five_points(keypoints: np.ndarray) -> np.ndarray:
  """(N, 68, 2) iBUG keypoints -> (N, 5, 2): right eye, left eye, nose tip, right and left mouth corner."""
  kp = np.asarray(keypoints, np.float64)
  return np.stack([kp[:, 36:42].mean(1), kp[:, 42:48].mean(1), kp[:, 30], kp[:, 48], kp[:, 54]], axis=1)


def alignment_transforms(keypoints: np.ndarray) -> np.ndarray:
  """(N, 68, 2) pixel keypoints -> (N, 2, 3) similarity maps from template pixels to image pixels."""
  matrices = np.zeros((len(keypoints), 2, 3))
  for n, points in enumerate(five_points(keypoints)):
    matrices[n] = sktransform.estimate_transform('similarity', TEMPLATE_112, points).params[:2]
  if not np.isfinite(matrices).all():
    raise ValueError('ArcFace alignment: the keypoints give no finite similarity transform')
  return matrices.astype(np.float32)


def warp_affine(images: Array, matrices: Array, size: int = ARCFACE_SIZE) -> Array:
  """Bilinear resampling: out[n, i, j] = images[n] at matrices[n] @ (j, i, 1), zeros outside (jit-able).

  Pixel centres are at integer coordinates (see the module docstring for the equivalent torch call).
  """
  n, h, w, c = images.shape
  rows, cols = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32),
                            indexing='ij')
  m = matrices.astype(jnp.float32)[:, :, :, None, None]
  x = m[:, 0, 0] * cols + m[:, 0, 1] * rows + m[:, 0, 2]
  y = m[:, 1, 0] * cols + m[:, 1, 1] * rows + m[:, 1, 2]
  x0, y0 = jnp.floor(x), jnp.floor(y)
  flat = images.reshape(n, h * w, c)
  out = 0.0
  for dy in (0, 1):
    for dx in (0, 1):
      xi, yi = x0 + dx, y0 + dy
      weight = (1 - jnp.abs(x - xi)) * (1 - jnp.abs(y - yi))
      inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      # Integer arithmetic: float32 row * w + col loses exactness beyond 2**24 pixels.
      index = jnp.clip(yi, 0, h - 1).astype(jnp.int32) * w + jnp.clip(xi, 0, w - 1).astype(jnp.int32)
      taps = jnp.take_along_axis(flat, index.reshape(n, size * size, 1), axis=1).reshape(n, size, size, c)
      out = out + taps * jnp.where(inside, weight, 0.0)[..., None]
  return out


_warp_jit = jax.jit(warp_affine, static_argnames='size')


def align_faces(images: Array, keypoints: np.ndarray) -> Array:
  """(N, H, W, 3) images and (N, 68, 2) pixel keypoints -> (N, 112, 112, 3) ArcFace-aligned faces."""
  return _warp_jit(jnp.asarray(images, jnp.float32), jnp.asarray(alignment_transforms(keypoints)))


class ArcFaceEmbedder:
  """Aligns faces by their 68 keypoints and embeds them with IR-SE-50 (jit-compiled, batched).

  `apply(variables, images, matrices)` is the pure function (matrices from `alignment_transforms`).
  """

  name = 'arcface'

  def __init__(self, weights_path: os.PathLike):
    self.module = IResNetSE50()
    self.variables = jax.device_put(load_arcface_weights(weights_path))
    self._fn = jax.jit(self.apply)

  def apply(self, variables: Dict[str, Any], images: Array, matrices: Array) -> Array:
    return self.module.apply(variables, warp_affine(images.astype(jnp.float32), matrices))

  def __call__(self, images: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) in [-1, 1], (N, 68, 2) pixel keypoints -> (N, 512) float32 unit embeddings."""
    if len(images) == 0:
      return np.zeros((0, EMBEDDING_SIZE), np.float32)
    matrices = alignment_transforms(keypoints)
    return np.asarray(self._fn(self.variables, jnp.asarray(images, jnp.float32), jnp.asarray(matrices)))
