"""ArcFace IR-SE-50 and its face alignment against PyTorch: an IR-SE-50 written here with random weights and
running statistics (saved as a state dict and loaded by the module's loader), and torch's
affine_grid/grid_sample (and skimage's warp) on a real photograph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data as skdata
from skimage import transform as sktransform
import torch
from torch import nn

from bilayer_jax.evaluators import arcface

# Five-point locations of the astronaut's face in the 256x256 image (dlib's 68-point predictor).
_EYES = ((101.5, 50.7), (122.8, 51.7))
_NOSE, _MOUTH_R, _MOUTH_L = (112.0, 63.0), (100.0, 69.0), (122.0, 70.0)


class _SqueezeExcite(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.fc1 = nn.Conv2d(channels, channels // 16, 1, bias=False)
    self.fc2 = nn.Conv2d(channels // 16, channels, 1, bias=False)

  def forward(self, x):
    return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class _Unit(nn.Module):

  def __init__(self, in_ch, depth, stride):
    super().__init__()
    if in_ch == depth:
      self.shortcut_layer = nn.MaxPool2d(1, stride)
    else:
      self.shortcut_layer = nn.Sequential(nn.Conv2d(in_ch, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
    self.res_layer = nn.Sequential(
        nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
        nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), _SqueezeExcite(depth))

  def forward(self, x):
    return self.res_layer(x) + self.shortcut_layer(x)


class _TorchIRSE50(nn.Module):
  """InsightFace_Pytorch's Backbone(50, mode='ir_se') key layout, written independently."""

  def __init__(self):
    super().__init__()
    self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
    units = []
    for in_ch, depth, count in ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)):
      units += [_Unit(in_ch, depth, 2)] + [_Unit(depth, depth, 1) for _ in range(count - 1)]
    self.body = nn.Sequential(*units)
    self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.6), nn.Flatten(),
                                      nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

  def forward(self, x):
    x = self.output_layer(self.body(self.input_layer(x)))
    return x / x.norm(dim=1, keepdim=True)


@pytest.fixture(scope='module')
def torch_arcface(tmp_path_factory):
  """(eval-mode torch IR-SE-50 with random weights and BN statistics, path of its saved state dict).

  The running statistics are measured on noise images and then perturbed per channel: arbitrary statistics
  let activations grow to ~1e4 over 50 layers, where fp32 torch itself differs from fp64 by ~1e-3.
  """
  torch.manual_seed(0)
  model = _TorchIRSE50()
  norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
  with torch.no_grad():
    for norm in norms:
      norm.weight.uniform_(0.5, 1.5)
      norm.bias.normal_(0, 0.2)
      norm.momentum = None  # running statistics = plain averages over the calibration batch
    for module in model.modules():
      if isinstance(module, nn.PReLU):
        module.weight.uniform_(0.05, 0.4)
    model.train()
    model(torch.empty(2, 3, 112, 112).uniform_(-1, 1))
    for norm in norms:
      norm.running_mean.add_(0.1 * norm.running_var.sqrt() * torch.randn_like(norm.running_mean))
      norm.running_var.mul_(torch.empty_like(norm.running_var).uniform_(0.5, 2.0))
  model.eval()
  path = tmp_path_factory.mktemp('arcface') / 'insight_face.pth'
  torch.save(model.state_dict(), path)
  return model, path


def _astronaut_batch():
  """The astronaut photo at 256x256 in [-1, 1], widened to 256x320 (so rows and columns cannot be swapped
  unnoticed), twice, with 68 keypoints: as found, and a face moved, scaled and rotated so that its crop
  reaches past the image corner (zeros padding)."""
  image = sktransform.resize(skdata.astronaut(), (256, 256), anti_aliasing=True).astype(np.float32) * 2 - 1
  image = np.concatenate([image, image[:, :64]], axis=1)
  ring = np.array([[-4.5, 0], [-1.5, -1.5], [1.5, -1.5], [4.5, 0], [1.5, 1.5], [-1.5, 1.5]])
  kp = np.tile(np.array(_NOSE), (68, 1))  # points the alignment ignores sit on the nose
  kp[36:42], kp[42:48] = np.array(_EYES[0]) + ring, np.array(_EYES[1]) + ring
  kp[48], kp[54] = _MOUTH_R, _MOUTH_L
  angle = np.deg2rad(25)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  moved = 3 * (kp - _NOSE) @ rotation.T + (20, 230)
  return np.stack([image, image]), np.stack([kp, moved]).astype(np.float32)


def _torch_theta(matrices, height, width, size=112):
  """Pixel-space template->image maps as affine_grid thetas for align_corners=False."""
  theta = np.zeros((len(matrices), 2, 3))
  for row, extent in ((0, width), (1, height)):
    a, b, t = matrices[:, row, 0], matrices[:, row, 1], matrices[:, row, 2]
    theta[:, row] = np.stack([a * size / extent, b * size / extent,
                              (2 * t + a * (size - 1) + b * (size - 1) + 1) / extent - 1], -1)
  return torch.from_numpy(theta.astype(np.float32))


def _torch_align(images, matrices):
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  grid = nn.functional.affine_grid(_torch_theta(matrices, *images.shape[1:3]), (len(images), 3, 112, 112),
                                   align_corners=False)
  return nn.functional.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)


def test_ir_se50_matches_torch(torch_arcface):
  model, path = torch_arcface
  variables = arcface.load_arcface_weights(path)
  module = arcface.IResNetSE50()
  # The loader fills exactly the module's variable tree.
  shapes = lambda tree: {'/'.join(str(k.key) for k in p): np.shape(v)
                         for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  initial = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 112, 112, 3)))
  assert shapes(variables) == shapes(initial)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ours = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(x)))
  assert ours.shape == (2, 512)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
  np.testing.assert_allclose(ours, ref, atol=2e-5)
  assert float(ref[0] @ ref[1]) < 0.9  # distinct inputs, distinct embeddings: the check has teeth


def test_alignment_matches_torch_grid_sample_and_skimage():
  images, keypoints = _astronaut_batch()
  matrices = arcface.alignment_transforms(keypoints)
  points = arcface.five_points(keypoints)
  # The maps go from the template into the image: they land the template near the five points.
  mapped = np.einsum('nij,kj->nki', matrices[:, :, :2], arcface.TEMPLATE_112) + matrices[:, None, :, 2]
  eye_distance = np.linalg.norm(points[:, 1] - points[:, 0], axis=-1)
  assert (np.linalg.norm(mapped - points, axis=-1).max(1) < 0.2 * eye_distance).all()
  ours = np.asarray(arcface.align_faces(images, keypoints))
  with torch.no_grad():
    ref = _torch_align(images, matrices).numpy().transpose(0, 2, 3, 1)
  assert ours.shape == (2, 112, 112, 3)
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  assert (ours[1] == 0).all(-1).mean() > 0.05 and (ours[0] != 0).any(-1).all()  # padding tested on one only
  for image, matrix, face in zip(images, matrices, ours):
    sk = sktransform.warp(image, sktransform.AffineTransform(np.vstack([matrix, [0, 0, 1]])),
                          output_shape=(112, 112), order=1, mode='constant', cval=0, clip=False)
    np.testing.assert_allclose(face, sk, atol=1e-4)


def test_embedder_aligns_then_embeds_like_torch(torch_arcface):
  model, path = torch_arcface
  images, keypoints = _astronaut_batch()
  embeds = arcface.ArcFaceEmbedder(path)(images, keypoints)
  with torch.no_grad():
    ref = model(_torch_align(images, arcface.alignment_transforms(keypoints))).numpy()
  assert embeds.shape == (2, 512) and embeds.dtype == np.float32
  np.testing.assert_allclose(embeds, ref, atol=2e-5)


def test_weight_errors_name_the_file_and_key(torch_arcface, tmp_path):
  _, path = torch_arcface
  with pytest.raises(arcface.ArcFaceWeightsNotFoundError, match='model_ir_se50.pth') as info:
    arcface.load_arcface_weights(tmp_path / 'insight_face.pth')
  assert isinstance(info.value, FileNotFoundError) and 'arcface_weights' in str(info.value)
  state = torch.load(path, map_location='cpu', weights_only=True)
  bad = tmp_path / 'bad.pth'
  wrong = dict(state, **{'body.5.res_layer.1.weight': torch.zeros(128, 128, 1, 1)})
  torch.save(wrong, bad)
  with pytest.raises(arcface.ArcFaceWeightsError) as info:
    arcface.load_arcface_weights(bad)
  message = str(info.value)
  assert str(bad) in message and "'body.5.res_layer.1.weight'" in message
  assert '(128, 128, 3, 3)' in message and '(128, 128, 1, 1)' in message and len(message.splitlines()) == 2
  missing = {k: v for k, v in state.items() if k != 'output_layer.4.running_var'}
  torch.save(missing, bad)
  with pytest.raises(ValueError, match=r"missing key 'output_layer\.4\.running_var'"):
    arcface.load_arcface_weights(bad)
