"""Perceptual VGG extractors against a PyTorch VGG built in the test from the same random weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bilayer_jax.convert import perceptual
from bilayer_jax.models import vgg


def _torch_features(arch):
  """A torchvision-layout `features` Sequential with average pooling (as the original slices it)."""
  layers, in_ch = [], 3
  for kind, width in vgg.layer_kinds(arch, 10_000):
    if kind == 'conv':
      layers.append(torch.nn.Conv2d(in_ch, width, 3, padding=1))
      in_ch = width
    elif kind == 'relu':
      layers.append(torch.nn.ReLU())
    else:
      layers.append(torch.nn.AvgPool2d(2))
  return torch.nn.Sequential(*layers)


@pytest.mark.parametrize('spec', [vgg.VGG19_IMAGENET, vgg.VGG16_FACE], ids=lambda s: s.name)
def test_features_match_torch_and_file_loader(spec, tmp_path):
  torch.manual_seed(0)
  features = _torch_features(spec.arch)
  path = tmp_path / spec.file_name
  state = {f'features.{k}': v for k, v in features.state_dict().items()}
  state['classifier.0.weight'] = torch.zeros(4, 4)  # full model files also carry the classifier
  torch.save(state, path)
  params = perceptual.load_vgg_params(spec, path)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  ours = vgg.VGGFeatures(spec).apply(params, jnp.asarray(images))
  # The original's preprocessing buffers, then the slices ending at the requested indices.
  if spec.arch == 'vgg19':
    mean = torch.FloatTensor([0.485, 0.456, 0.406])[None, :, None, None] * 2 - 1
    std = torch.FloatTensor([0.229, 0.224, 0.225])[None, :, None, None] * 2
  else:
    mean = torch.FloatTensor([103.939, 116.779, 123.680])[None, :, None, None] / 127.5 - 1
    std = torch.FloatTensor([1., 1., 1.])[None, :, None, None] / 127.5
  x = (torch.from_numpy(images.transpose(0, 3, 1, 2)) - mean) / std
  refs = []
  with torch.no_grad():
    for index, layer in enumerate(features):
      x = layer(x)
      if index in spec.layers:
        refs.append(x.numpy().transpose(0, 2, 3, 1))
      if index == max(spec.layers):
        break
  assert len(ours) == len(refs) == 5
  for a, r in zip(ours, refs):
    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4 * np.abs(r).max())


def test_missing_and_mismatched_weights_are_explained(tmp_path):
  with pytest.raises(perceptual.PerceptualWeightsError, match='vgg19-dcbb9e9d.pth'):
    perceptual.load_vgg_params(vgg.VGG19_IMAGENET, tmp_path / 'nowhere.pth')
  torch.save({'features.0.weight': torch.zeros(64, 3, 5, 5), 'features.0.bias': torch.zeros(64)},
             tmp_path / 'bad.pth')
  with pytest.raises(perceptual.PerceptualWeightsError, match=r"features.0.weight': expected shape \(64, 3, 3, 3\)"):
    perceptual.load_vgg_params(vgg.VGG16_FACE, tmp_path / 'bad.pth')


def test_weighted_feature_l1_sends_no_gradient_to_the_real_branch():
  fake = [jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 1, 1, 1))]
  real = [jnp.zeros((1, 2, 2, 1)), jnp.ones((1, 1, 1, 1))]
  value, grad_real = jax.value_and_grad(lambda r: vgg.weighted_feature_l1(fake, r, [0.5, 2.0]))(real)
  assert float(value) == pytest.approx(2.5)
  assert all(float(jnp.abs(g).sum()) == 0 for g in grad_real)


def test_lpd_vgg_face_file_is_a_features_state_dict(tmp_path):
  """The LPD official code's vgg_face_weights.pth is VGG16's `features` module state dict ('0.weight', ...,
  no 'features.' prefix): it loads as the same params as the torchvision layout."""
  spec = dataclasses.replace(vgg.LPD_VGGFACE, width_divisor=8)
  rng = np.random.default_rng(0)
  state, in_channels = {}, 3
  for index, (kind, width) in enumerate(vgg.layer_kinds('vgg16', max(spec.layers))):
    if kind == 'conv':
      state[f'{index}.weight'] = torch.from_numpy(rng.normal(size=(width // 8, in_channels, 3, 3)).astype(np.float32))
      state[f'{index}.bias'] = torch.from_numpy(rng.normal(size=(width // 8,)).astype(np.float32))
      in_channels = width // 8
  torch.save(state, tmp_path / spec.file_name)
  params = perceptual.load_vgg_params(spec, tmp_path / spec.file_name)
  expected = perceptual.vgg_params_from_state_dict(spec, {f'features.{k}': v.numpy() for k, v in state.items()})
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, expected)
  np.testing.assert_array_equal(params['params']['features_28']['kernel'],
                                state['28.weight'].numpy().transpose(2, 3, 1, 0))
