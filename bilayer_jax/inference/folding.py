"""Per-avatar folding: the per-frame network as a static conv net (the original's unused
`prepare_for_mobile_inference`; docs/export.md#folding).

After an avatar is initialised, everything identity-specific in the per-frame path is a constant:
* AdaBN (frozen running statistics, predicted gamma/beta) and the plain first BN become per-channel
  affines `x * scale + shift`; the ones that directly follow a conv (norm2 of each block) are folded
  into that conv's kernel and bias;
* the per-identity 1x1 skip convs (AdaptiveConv2d) become ordinary 1x1 convs;
* spectral norm (eval mode: stored u, v) is divided into the kernels;
* the (enhanced) high-frequency texture is baked in.
What is left maps 136 keypoint values to an image and a mask: the keypoint MLP, 4-7 up-sampling residual
blocks of plain convs, the heads, a bilinear warp of the baked texture and an add.

`FoldedFrameNet` holds the folded arrays (float32 numpy, names listed in `FoldedFrameNet.arrays`) and the
static structure; `frame_forward` is the pure-jnp forward that jax2tf converts to TFLite, and
`bilayer_jax.inference.torch_frame_net` is the same network in PyTorch.
"""

import dataclasses
from typing import Any, Dict, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.models import keypoints_embedder
from bilayer_jax.models import layers
from bilayer_jax.models import warp
from bilayer_jax.models.config import BilayerConfig

Array = jax.Array
LEAKY_SLOPE = 0.2


@dataclasses.dataclass(frozen=True)
class FrameNetSpec:
  """Static structure of a folded per-frame network."""
  image_size: int
  num_harmonics: int  # 0: raw keypoints into the MLP
  num_mlp_layers: int
  pose_channels: int  # channels of the pose tensor (the MLP output read as (C, S, S))
  pose_size: int
  num_blocks: int
  pred_segmentation: bool


@dataclasses.dataclass
class FoldedFrameNet:
  """A folded per-frame network: `spec` plus float32 `arrays` (see `fold_avatar` for the names)."""
  spec: FrameNetSpec
  arrays: Dict[str, np.ndarray]

  def save(self, path) -> None:
    """Writes an .npz (arrays plus the spec as `spec/<field>` scalars)."""
    spec = {f'spec/{k}': np.asarray(v) for k, v in dataclasses.asdict(self.spec).items()}
    with open(path, 'wb') as f:
      np.savez(f, **self.arrays, **spec)

  @classmethod
  def load(cls, path) -> 'FoldedFrameNet':
    with np.load(path) as data:
      spec = {k[len('spec/'):]: data[k].item() for k in data.files if k.startswith('spec/')}
      arrays = {k: data[k] for k in data.files if not k.startswith('spec/')}
    return cls(FrameNetSpec(**spec), arrays)


def _sigma(kernel: Array, spectral: Mapping[str, Any] | None, conv: bool) -> Array:
  """The eval-mode spectral-norm divisor u . (W v) (layers.spectral_normalize), 1 without spectral norm."""
  if not spectral:
    return jnp.float32(1)
  w = jnp.transpose(kernel, (3, 2, 0, 1)).reshape(kernel.shape[-1], -1) if conv else kernel.T
  return jnp.dot(jnp.asarray(spectral['u'], jnp.float32), w @ jnp.asarray(spectral['v'], jnp.float32))


def _effective(params: Mapping[str, Any], spectral: Mapping[str, Any], name: str, conv: bool):
  p = params[name]
  kernel, bias = jnp.asarray(p['kernel'], jnp.float32), jnp.asarray(p['bias'], jnp.float32)
  return kernel / _sigma(kernel, (spectral or {}).get(name), conv), bias


def _bn_affine(stats: Mapping[str, Any], eps: float, gamma=None, beta=None):
  """Eval-mode BN (optionally with per-channel gamma/beta) as `x * scale + shift`."""
  inv_std = jax.lax.rsqrt(jnp.asarray(stats['var'], jnp.float32) + eps)
  scale = inv_std if gamma is None else inv_std * gamma
  shift = -jnp.asarray(stats['mean'], jnp.float32) * scale
  return scale, shift if beta is None else shift + beta


def is_avatar_array(name: str) -> bool:
  """Whether a folded array depends on the avatar (texture, adaptive norms and skips) or only on the
  weights (the keypoint MLP, the second convs, the heads, the first plain BN)."""
  return not (name.startswith('mlp') or '_conv2_' in name or name.startswith('heads') or
              name.startswith('block0_norm1'))


def frame_net_spec(cfg: BilayerConfig) -> FrameNetSpec:
  return FrameNetSpec(image_size=cfg.image_size, num_harmonics=cfg.pse_num_harmonics if cfg.pse_use_harmonic_enc else 0,
                      num_mlp_layers=cfg.pse_num_blocks, pose_channels=cfg.inf_max_channels,
                      pose_size=cfg.inf_input_tensor_size, num_blocks=cfg.num_inf_blocks,
                      pred_segmentation=cfg.inf_pred_segmentation)


def fold_arrays(cfg: BilayerConfig, variables: Mapping[str, Any], texture: Array,
                adaptive: Sequence[Tuple[Array, Array]]) -> Dict[str, Array]:
  """The folded arrays of ONE avatar, as jnp (traceable: the TFLite avatar-init model runs this).

  Args:
    cfg: the architecture.
    variables: the BilayerGenerator's variables ({'params', 'batch_stats', 'spectral'}).
    texture: (S, S, 3) the avatar's texture.
    adaptive: the inference projector's outputs for this avatar (no batch axis).
  """
  if cfg.inf_norm_layer_type != 'ada_bn' or cfg.inf_activation_type != 'leakyrelu' or \
     cfg.pse_activation_type != 'leakyrelu':
    raise ValueError('folding supports the paper family (ada_bn norms, leakyrelu activations)')
  get = lambda col, net: variables.get(col, {}).get(net, {})
  kp_params, kp_spectral = get('params', 'keypoints_embedder')['net'], get('spectral', 'keypoints_embedder')
  inf_params = get('params', 'inference_generator')['gen_inf']
  inf_stats = get('batch_stats', 'inference_generator')['gen_inf']
  inf_spectral = get('spectral', 'inference_generator').get('gen_inf', {})
  kp_spectral = kp_spectral.get('net', {})
  arrays: Dict[str, Array] = {}

  for i in range(cfg.pse_num_blocks):
    arrays[f'mlp{i}_kernel'], arrays[f'mlp{i}_bias'] = _effective(kp_params, kp_spectral, f'mlp_{2 * i}', False)

  consumed = 0
  for k in range(cfg.num_inf_blocks):
    params, stats, spectral = inf_params[f'blocks_{k}'], inf_stats[f'blocks_{k}'], inf_spectral.get(f'blocks_{k}', {})
    if k == 0:  # the first norm of the generator is a plain affine BN
      bn = params['block_feats_0']
      scale1, shift1 = _bn_affine(stats['block_feats_0'], cfg.eps, bn['scale'], bn['bias'])
    else:
      gamma, beta = adaptive[consumed]
      consumed += 1
      scale1, shift1 = _bn_affine(stats['block_feats_0']['norm_layer'], cfg.eps, 1.0 + gamma, beta)
    gamma2, beta2 = adaptive[consumed]
    skip_w, skip_b = adaptive[consumed + 1]
    consumed += 2
    # norm2 directly follows conv1: fold its affine into conv1's kernel and bias.
    scale2, shift2 = _bn_affine(stats['block_feats_3']['norm_layer'], cfg.eps, 1.0 + gamma2, beta2)
    conv1_k, conv1_b = _effective(params, spectral, 'block_feats_2', True)
    arrays[f'block{k}_norm1_scale'], arrays[f'block{k}_norm1_shift'] = scale1, shift1
    arrays[f'block{k}_conv1_kernel'] = conv1_k * scale2
    arrays[f'block{k}_conv1_bias'] = conv1_b * scale2 + shift2
    arrays[f'block{k}_conv2_kernel'], arrays[f'block{k}_conv2_bias'] = _effective(params, spectral, 'block_1', True)
    arrays[f'block{k}_skip_kernel'] = jnp.transpose(skip_w)  # (Co, Ci) -> (Ci, Co)
    arrays[f'block{k}_skip_bias'] = skip_b
  if consumed + 1 != len(adaptive):
    raise ValueError(f'avatar has {len(adaptive)} adaptive parameter sets, the inference generator uses '
                     f'{consumed + 1}')
  gamma, beta = adaptive[consumed]
  final = f'blocks_{cfg.num_inf_blocks}'
  arrays['final_scale'], arrays['final_shift'] = _bn_affine(inf_stats[final]['norm_layer'], cfg.eps,
                                                            1.0 + gamma, beta)
  heads = [_effective(inf_params, inf_spectral, f'heads_{h}_0', True)
           for h in range(3 if cfg.inf_pred_segmentation else 2)]
  arrays['heads_kernel'] = jnp.concatenate([k for k, _ in heads], axis=-1)
  arrays['heads_bias'] = jnp.concatenate([b for _, b in heads])
  arrays['texture'] = jnp.asarray(texture, jnp.float32)
  return arrays


def fold_avatar(cfg: BilayerConfig, variables: Mapping[str, Any], avatar: Mapping[str, Any],
                index: int = 0) -> FoldedFrameNet:
  """Folds avatar `index` of an initialised batch (`BilayerGenerator.init_avatar`'s output) into a static
  per-frame network with float32 numpy arrays."""
  adaptive = [tuple(a[index] for a in pair) for pair in avatar['adaptive']]
  arrays = jax.jit(fold_arrays, static_argnums=0)(cfg, variables, avatar['texture'][index], adaptive)
  return FoldedFrameNet(frame_net_spec(cfg), {k: np.asarray(v, np.float32) for k, v in arrays.items()})


def _leaky(x: Array) -> Array:
  # jax.nn.leaky_relu converts to TFLite's LEAKY_RELU, which has its own output scale when integer-
  # quantised (maximum(x, slope * x) forces one scale on both sides and clips the negative side).
  return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def _upsample2x(x: Array) -> Array:
  """Nearest x2 upsampling as concatenations + reshapes (same values as layers.upsample_nearest2x): the
  broadcasts of jnp.repeat become BROADCAST_TO in TFLite, which XNNPACK does not run."""
  n, h, w, c = x.shape
  x = jnp.concatenate([x, x], axis=-1).reshape(n, h, 2 * w, c)  # each pixel twice along the width
  return jnp.concatenate([x, x], axis=2).reshape(n, 2 * h, 2 * w, c)  # each row twice


def _conv(x: Array, kernel: Array, bias: Array) -> Array:
  k = kernel.shape[0]
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(k // 2, k // 2)] * 2,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + bias


def frame_forward(spec: FrameNetSpec, arrays: Mapping[str, Array], poses: Array,
                  low_res_upsample_conv: bool = True, taps: Dict[str, Array] | None = None) -> Dict[str, Array]:
  """The folded per-frame network: (N, 136) keypoints in [-1, 1] -> images and masks.

  Args:
    spec, arrays: a `FoldedFrameNet`'s fields (arrays may be numpy or jnp).
    poses: (N, 136) float32 keypoints (x0, y0, x1, y1, ...) normalised to [-1, 1] in the crop.
    low_res_upsample_conv: compute each conv3x3(upsample(x)) at the low resolution
      (`layers.conv3x3_after_upsample`; same function, 16/36 of the multiply-adds). False keeps the
      literal upsample-then-conv, which some runtimes execute faster.
    taps: if given, filled with the tensors that the integer-quantised export stores between ops and that
      `equalize` rescales per channel: `stream<k>` (the residual stream entering block k; k = num_blocks
      is the one entering the final norm), `block<k>_norm1` and `block<k>_conv1` (the inputs of the block's
      LeakyReLUs) and `final` (the input of the last LeakyReLU).

  Returns:
    {'image': (N, S, S, 3) lf + hf in [-1, 1] (nominal, not clamped), 'mask': (N, S, S, 1) in [0, 1]
     (only with segmentation), 'lf': low-frequency layer, 'hf': warped texture, 'uv': sampling grid}.
  """
  a = {k: jnp.asarray(v) for k, v in arrays.items()}
  # Named scopes mark the precision-critical parts (harmonic phases, warp coordinates), which int8
  # export keeps in float (tflite_export.FLOAT_SCOPES, FLOAT_FROM_SCOPES).
  with jax.named_scope('keypoint_mlp'):
    x = poses.astype(jnp.float32)
    if spec.num_harmonics:
      x = keypoints_embedder.harmonic_encoding(x, spec.num_harmonics)
    for i in range(spec.num_mlp_layers):
      if i:
        x = _leaky(x)
      x = x @ a[f'mlp{i}_kernel'] + a[f'mlp{i}_bias']
  x = x.reshape(-1, spec.pose_channels, spec.pose_size, spec.pose_size).transpose(0, 2, 3, 1)
  taps = {} if taps is None else taps
  for k in range(spec.num_blocks):
    taps[f'stream{k}'] = x
    h = taps[f'block{k}_norm1'] = x * a[f'block{k}_norm1_scale'] + a[f'block{k}_norm1_shift']
    h = taps[f'block{k}_conv1'] = _conv(_leaky(h), a[f'block{k}_conv1_kernel'], a[f'block{k}_conv1_bias'])
    h = _leaky(h)
    if low_res_upsample_conv:
      h = layers.conv3x3_after_upsample(h, a[f'block{k}_conv2_kernel']) + a[f'block{k}_conv2_bias']
    else:
      h = _conv(_upsample2x(h), a[f'block{k}_conv2_kernel'], a[f'block{k}_conv2_bias'])
    if k < spec.num_blocks - 1:
      x = h + _upsample2x(x @ a[f'block{k}_skip_kernel'] + a[f'block{k}_skip_bias'])
  # The last block's skip conv, its residual add and the final norm (`h` and `x` are still block L-1's).
  with jax.named_scope('tail'):
    last = spec.num_blocks - 1
    skip = x @ a[f'block{last}_skip_kernel'] + a[f'block{last}_skip_bias']
    x = taps[f'stream{spec.num_blocks}'] = h + _upsample2x(skip)
    x = taps['final'] = x * a['final_scale'] + a['final_shift']
    x = _leaky(x)
  with jax.named_scope('heads'):
    y = _conv(x, a['heads_kernel'], a['heads_bias'])
  with jax.named_scope('warp'):
    uv = jnp.asarray(warp.identity_grid(spec.image_size)) + jnp.tanh(y[..., 0:2])
    lf = jnp.tanh(y[..., 2:5])
    hf = warp.grid_sample_shared(a['texture'], uv)
  out = {'image': lf + hf, 'lf': lf, 'hf': hf, 'uv': uv}
  if spec.pred_segmentation:
    out['mask'] = jax.nn.sigmoid(y[..., 5:6])
  return out
