"""One LPD person's per-frame network, folded, and its TFLite export: driver face crop -> image + mask.

Per frame the LPD animator runs the pose encoder (MobileNetV2) on the driver's crop, the AdaIN MLP on
[identity, pose] and the generator. For one person everything but the crop is a constant, so `fold` turns
the eval-mode variables into plain arrays:
* each pose-encoder BatchNorm (running statistics) is folded into the convolution before it
  (kernel * γ/√(var + ε), bias β - mean * γ/√(var + ε));
* every spectrally normalised kernel of the generator (convolutions, both MLP layers) is divided by its
  stored σ = u·(W v) (eval mode does no power iteration);
* the identity's rows of the MLP's first layer are folded into its bias: W [id; pose] + b =
  W_pose pose + (W_id id + b);
* the instance norm of the generator's learned constant (its first AdaIN's input) is precomputed;
what is left takes only the crop. `frame_forward` is that network in pure jnp (what jax2tf converts);
`bilayer_jax.inference.lpd_torch` is the same in PyTorch. The identity baked in is `baked_identity`: the
avatar's (the mean identity-encoder vector of its photos), or, for an animator of fine-tuned params
(`LPDAnimator.finetuned`), the generator's own `identity_embedding`, which is what its render uses.

TFLite (`export_tflite`): input `crops` (batch, S, S, 3) float32 in [-1, 1], outputs `image` (batch, S, S, 3)
(the person on black, [-1, 1]) and `mask` (batch, S, S, 1), builtin ops only, with a .json contract next to it.
"""

import dataclasses
import os
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.inference import folding
from bilayer_jax.inference import lpd_animator
from bilayer_jax.inference import tflite_export
from bilayer_jax.models import layers
from bilayer_jax.models.lpd import networks
from bilayer_jax.models.lpd.config import LPDConfig

_BN_EPS = 1e-5  # encoders.batch_norm


@dataclasses.dataclass(frozen=True)
class PoseConv:
  """One folded pose-encoder convolution: arrays `pose/<name>/kernel` (HWIO) and `/bias`, from the conv and
  BatchNorm at `conv`, `bn` in encoders.PoseEncoder's variables."""
  name: str
  stride: int
  depthwise: bool
  relu6: bool
  conv: str
  bn: str


@dataclasses.dataclass(frozen=True)
class DecoderBlock:
  """One generator block: `<name>/conv1`, `<name>/conv2` kernels and, when `skip`, `<name>/skip` kernel + bias."""
  name: str
  upsample: bool
  skip: bool


def pose_plan(cfg: LPDConfig) -> List[Tuple[Tuple[PoseConv, ...], bool]]:
  """The pose encoder's stages as (convolutions, residual add) in order (encoders.PoseEncoder)."""
  plan = [((PoseConv('features_0', 2, False, True, 'features_0/0', 'features_0/1'),), False)]
  channels, index = cfg.mobilenet_stem, 1
  for expansion, out, repeats, first_stride in cfg.mobilenet_stages:
    for i in range(repeats):
      stride, name = first_stride if i == 0 else 1, f'features_{index}'
      e = int(expansion != 1)  # InvertedResidual: no expansion conv shifts the children's indices down by one
      convs = [PoseConv(f'{name}/expand', 1, False, True, f'{name}/conv_0/0', f'{name}/conv_0/1')] if e else []
      convs += [PoseConv(f'{name}/depthwise', stride, True, True, f'{name}/conv_{e}/0', f'{name}/conv_{e}/1'),
                PoseConv(f'{name}/project', 1, False, False, f'{name}/conv_{e + 1}', f'{name}/conv_{e + 2}')]
      plan.append((tuple(convs), stride == 1 and channels == out))
      channels, index = out, index + 1
  last = f'features_{index}'
  plan.append(((PoseConv(last, 1, False, True, f'{last}/0', f'{last}/1'),), False))
  return plan


def decoder_plan(cfg: LPDConfig) -> List[DecoderBlock]:
  """The generator's blocks in order (networks.Generator): residual blocks at the constant's size, then up."""
  channels = cfg.generator_channels
  specs = [(channels[0], channels[0], False)] * cfg.num_residual_blocks
  specs += [(cin, cout, True) for cin, cout in zip(channels[:-1], channels[1:])]
  return [DecoderBlock(f'decoder_blocks_{i}', up, cin != cout or up) for i, (cin, cout, up) in enumerate(specs)]


def baked_identity(animator: lpd_animator.LPDAnimator, avatar: lpd_animator.LPDAvatar) -> np.ndarray:
  """The (identity_dim,) vector the generator renders this avatar with (see the module docstring)."""
  identity = animator.variables['params']['generator']['identity_embedding'] if animator.finetuned else avatar.identity
  return np.asarray(identity, np.float32).reshape(-1)


def _sigma(oi_matrix: np.ndarray, spectral: Mapping[str, Any]) -> np.float64:
  """Eval-mode spectral norm u·(W v) of a PyTorch-layout (out, in) matrix (layers.spectral_normalize)."""
  w = oi_matrix.astype(np.float64)
  return np.asarray(spectral['u'], np.float64) @ (w @ np.asarray(spectral['v'], np.float64))


def _spectral_conv(params: Mapping[str, Any], spectral: Mapping[str, Any]) -> np.ndarray:
  kernel = np.asarray(params['kernel'], np.float64)
  return kernel / _sigma(np.transpose(kernel, (3, 2, 0, 1)).reshape(kernel.shape[-1], -1), spectral)


def _spectral_dense(params: Mapping[str, Any], spectral: Mapping[str, Any]) -> np.ndarray:
  kernel = np.asarray(params['kernel'], np.float64)
  return kernel / _sigma(kernel.T, spectral)


def _at(tree: Mapping[str, Any], path: str) -> Mapping[str, Any]:
  for key in path.split('/'):
    tree = tree[key]
  return tree


def _bn_conv(params: Mapping[str, Any], stats: Mapping[str, Any], conv: PoseConv) -> Tuple[np.ndarray, ...]:
  """(kernel, bias) of a bias-free conv followed by its eval-mode BatchNorm, in float64."""
  bn, bn_stats = _at(params, conv.bn), _at(stats, conv.bn)
  factor = np.asarray(bn['scale'], np.float64) / np.sqrt(np.asarray(bn_stats['var'], np.float64) + _BN_EPS)
  kernel = np.asarray(_at(params, conv.conv)['kernel'], np.float64) * factor  # HWIO: out channels last
  return kernel, np.asarray(bn['bias'], np.float64) - np.asarray(bn_stats['mean'], np.float64) * factor


def fold_arrays(cfg: LPDConfig, variables: Mapping[str, Any], identity: np.ndarray) -> Dict[str, np.ndarray]:
  """The folded float32 arrays (see the module docstring) of an animator's variables and an identity vector."""
  get = lambda collection, net: jax.device_get(variables.get(collection, {}).get(net, {}))
  enc_params, enc_stats = get('params', 'embedder')['pose_encoder'], get('batch_stats', 'embedder')['pose_encoder']
  gen, spectral = get('params', 'generator'), get('spectral', 'generator')
  arrays: Dict[str, np.ndarray] = {}
  for convs, _ in pose_plan(cfg):
    for conv in convs:
      arrays[f'pose/{conv.name}/kernel'], arrays[f'pose/{conv.name}/bias'] = _bn_conv(enc_params, enc_stats, conv)
  classifier = enc_params['classifier_1']
  arrays['pose/classifier/kernel'], arrays['pose/classifier/bias'] = classifier['kernel'], classifier['bias']
  first = _spectral_dense(gen['affine_params_projector_0'], spectral['affine_params_projector_0'])
  d = cfg.identity_dim
  arrays['mlp0/kernel'] = first[d:]
  arrays['mlp0/bias'] = np.asarray(identity, np.float64) @ first[:d] + gen['affine_params_projector_0']['bias']
  arrays['mlp2/kernel'] = _spectral_dense(gen['affine_params_projector_2'], spectral['affine_params_projector_2'])
  arrays['mlp2/bias'] = gen['affine_params_projector_2']['bias']
  constant = np.asarray(gen['constant']['constant'], np.float64)[0]
  arrays['constant'] = constant
  # Its instance norm, computed here: the TFLite converter folds that reduction of a constant into a
  # BROADCAST_TO of the wrong shape when the batch is over 1 (LiteRT then refuses the model).
  mean = constant.mean(axis=(0, 1))
  arrays['constant_normalized'] = (constant - mean) / np.sqrt(np.square(constant - mean).mean(axis=(0, 1)) +
                                                              cfg.adain_eps)
  for block in decoder_plan(cfg):
    first_conv, second_conv = networks._conv_indices(True, block.upsample)  # pylint: disable=protected-access
    p, s = gen[block.name], spectral[block.name]
    arrays[f'{block.name}/conv1/kernel'] = _spectral_conv(p[f'block_{first_conv}'], s[f'block_{first_conv}'])
    arrays[f'{block.name}/conv2/kernel'] = _spectral_conv(p[f'block_{second_conv}'], s[f'block_{second_conv}'])
    if block.skip:
      skip = f'skip_{int(block.upsample)}'
      arrays[f'{block.name}/skip/kernel'] = _spectral_conv(p[skip], s[skip])
      arrays[f'{block.name}/skip/bias'] = p[skip]['bias']
  head = f'decoder_blocks_{len(decoder_plan(cfg)) + 2}'
  arrays['head/kernel'], arrays['head/bias'] = _spectral_conv(gen[head], spectral[head]), gen[head]['bias']
  return {k: np.asarray(v, np.float32) for k, v in arrays.items()}


def fold(animator: lpd_animator.LPDAnimator, avatar: lpd_animator.LPDAvatar) -> Dict[str, np.ndarray]:
  """The person's folded per-frame arrays (`fold_arrays` of the animator's variables and `baked_identity`)."""
  return fold_arrays(animator.cfg, animator.variables, baked_identity(animator, avatar))


def _conv(x, kernel, stride: int = 1, groups: int = 1):
  k = kernel.shape[0]
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [((k - 1) // 2, (k - 1) // 2)] * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def _instance_norm(x, eps: float):
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _affine(normalized, bias, scale):
  return normalized * scale[:, None, None, :] + bias[:, None, None, :]


def frame_forward(cfg: LPDConfig, arrays: Mapping[str, Any], crops) -> Tuple[Any, Any]:
  """Folded network: (N, S, S, 3) crops in [-1, 1] -> (image (N, S, S, 3) in [-1, 1], mask (N, S, S, 1))."""
  a = {k: jnp.asarray(v) for k, v in arrays.items()}
  x = (crops.astype(jnp.float32) + 1) / 2
  for convs, residual in pose_plan(cfg):
    y = x
    for conv in convs:
      y = _conv(y, a[f'pose/{conv.name}/kernel'], conv.stride, y.shape[-1] if conv.depthwise else 1)
      y = y + a[f'pose/{conv.name}/bias']
      y = jax.nn.relu6(y) if conv.relu6 else y
    x = x + y if residual else y
  pose = jnp.mean(x, axis=(1, 2)) @ a['pose/classifier/kernel'] + a['pose/classifier/bias']
  hidden = jax.nn.relu(pose @ a['mlp0/kernel'] + a['mlp0/bias'])
  params = hidden @ a['mlp2/kernel'] + a['mlp2/bias']
  affine, start = [], 0
  for c in cfg.adain_channels:
    affine.append((params[:, start:start + c], params[:, start + c:start + 2 * c]))
    start += 2 * c
  eps = cfg.adain_eps
  x = a['constant'][None]  # batch 1: the first residual add broadcasts it
  for index, block in enumerate(decoder_plan(cfg)):
    (b1, s1), (b2, s2) = affine[2 * index:2 * index + 2]
    h = jax.nn.relu(_affine(a['constant_normalized'][None] if index == 0 else _instance_norm(x, eps), b1, s1))
    kernel = a[f'{block.name}/conv1/kernel']
    h = layers.conv3x3_after_upsample(h, kernel) if block.upsample else _conv(h, kernel)
    h = _conv(jax.nn.relu(_affine(_instance_norm(h, eps), b2, s2)), a[f'{block.name}/conv2/kernel'])
    if block.skip:
      x = _conv(x, a[f'{block.name}/skip/kernel']) + a[f'{block.name}/skip/bias']
      x = folding._upsample2x(x) if block.upsample else x  # pylint: disable=protected-access
    x = h + x
  x = jax.nn.relu(_affine(_instance_norm(x, eps), *affine[-1]))
  t = jnp.tanh(_conv(x, a['head/kernel']) + a['head/bias'])
  mask = 0.5 * t[..., 3:] + 0.5
  return (0.75 * t[..., :3] + 0.5) * mask * 2 - 1, mask


def export_tflite(animator: lpd_animator.LPDAnimator, avatar: lpd_animator.LPDAvatar, path: os.PathLike,
                  quantize: str = 'none', batch: int = 1,
                  representative_crops: Optional[np.ndarray] = None) -> pathlib.Path:
  """Writes the person's folded per-frame network as .tflite + .json contract (see the module docstring).

  Raises:
    tflite_export.ExportError: int8 without representative crops, or an unknown quantisation.
  """
  cfg, s = animator.cfg, animator.cfg.image_size
  arrays = fold(animator, avatar)
  model = tflite_export.convert_image_function(lambda crops: frame_forward(cfg, arrays, crops), 'crops', batch, s,
                                               quantize, representative_crops)
  contract = {
      'model': 'bilayer_jax LPD per-frame network (baked person)', 'quantize': quantize,
      'inputs': [{'name': 'crops', 'shape': [batch, s, s, 3], 'dtype': 'float32', 'range': '[-1, 1]',
                  'meaning': 'driver face crop (bilayer_jax.inference.preprocess.FacePreprocessor rule), '
                             'RGB / 255 * 2 - 1'}],
      'outputs': [{'name': 'image', 'shape': [batch, s, s, 3], 'dtype': 'float32', 'range': '[-1, 1] nominal',
                   'meaning': 'the person on black: RGB = (image + 1) / 2, clamp to [0, 1]'},
                  {'name': 'mask', 'shape': [batch, s, s, 1], 'dtype': 'float32', 'range': '[0, 1]',
                   'meaning': 'person mask: rgb * mask + background * (1 - mask)'}],
      'finetuned': bool(animator.finetuned)}
  return tflite_export.write_model(path, model, contract)


def jax_reference(animator: lpd_animator.LPDAnimator, avatar: lpd_animator.LPDAvatar,
                  crops: np.ndarray) -> Dict[str, np.ndarray]:
  """The animator's own (unfolded) render of the crops: what every export is checked against."""
  return animator.render(avatar, crops)
