"""One LPD person's folded per-frame network as a standalone PyTorch module (TorchScript; neither bilayer_jax
nor torchvision is needed to run it): driver face crops (N, 3, S, S) in [-1, 1] -> (image (N, 3, S, S) in
[-1, 1], the person on black; mask (N, 1, S, S) in [0, 1]).

    net = LPDFrameNet(lpd_export.fold(animator, avatar), animator.cfg).eval()
    write_torchscript(animator, avatar, 'person.pt')      # torch.jit.script + save

Built from `lpd_export.fold`'s arrays (BatchNorms folded into the pose encoder's convolutions, spectral norms
into the kernels, the identity into the AdaIN MLP's first bias) and laid out by the same plans
(`lpd_export.pose_plan`, `decoder_plan`), so it repeats `lpd_export.frame_forward` layer for layer in NCHW.
"""

import pathlib
from typing import Dict, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from bilayer_jax.inference import lpd_export
from bilayer_jax.inference import torchscript_io
from bilayer_jax.models.lpd.config import LPDConfig


def _tensor(array) -> torch.Tensor:
  return torch.from_numpy(np.array(array, np.float32))  # a writable copy


def _conv(arrays: Mapping[str, np.ndarray], name: str, stride: int = 1, depthwise: bool = False,
          bias: bool = True) -> torch.nn.Conv2d:
  """A Conv2d of the HWIO kernel `<name>/kernel` (and `<name>/bias`) with PyTorch's padding (k - 1) // 2."""
  weight = _tensor(np.transpose(arrays[f'{name}/kernel'], (3, 2, 0, 1)))
  out_channels, k = weight.shape[0], weight.shape[2]
  groups = out_channels if depthwise else 1
  conv = torch.nn.Conv2d(weight.shape[1] * groups, out_channels, k, stride, (k - 1) // 2, groups=groups, bias=bias)
  with torch.no_grad():
    conv.weight.copy_(weight)
    if bias:
      conv.bias.copy_(_tensor(arrays[f'{name}/bias']))
  return conv


def _linear(arrays: Mapping[str, np.ndarray], name: str) -> torch.nn.Linear:
  kernel = arrays[f'{name}/kernel']
  linear = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
  with torch.no_grad():
    linear.weight.copy_(_tensor(kernel.T))
    linear.bias.copy_(_tensor(arrays[f'{name}/bias']))
  return linear


def _adain(x: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
  mean = x.mean(dim=(2, 3), keepdim=True)
  var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
  return (x - mean) * torch.rsqrt(var + eps) * scale[:, :, None, None] + bias[:, :, None, None]


class PoseConv(torch.nn.Module):
  """A convolution with its BatchNorm folded in, then ReLU6 or nothing."""

  def __init__(self, arrays: Mapping[str, np.ndarray], spec: lpd_export.PoseConv):
    super().__init__()
    self.conv = _conv(arrays, f'pose/{spec.name}', spec.stride, spec.depthwise)
    self.relu6 = spec.relu6

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.conv(x)
    return F.relu6(x) if self.relu6 else x


class PoseStage(torch.nn.Module):
  """The stem, one inverted residual block, or the last 1x1 convolution of MobileNetV2."""

  def __init__(self, arrays: Mapping[str, np.ndarray], convs, residual: bool):
    super().__init__()
    self.convs = torch.nn.ModuleList([PoseConv(arrays, spec) for spec in convs])
    self.residual = residual

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = x
    for conv in self.convs:
      y = conv(y)
    return x + y if self.residual else y


class DecoderBlock(torch.nn.Module):
  """AdaIN -> ReLU -> [nearest x2] -> conv -> AdaIN -> ReLU -> conv, plus the skip ([1x1 conv, x2] or x)."""

  def __init__(self, arrays: Mapping[str, np.ndarray], spec: lpd_export.DecoderBlock, offset: int, cin: int,
               cout: int, eps: float):
    super().__init__()
    self.conv1 = _conv(arrays, f'{spec.name}/conv1', bias=False)
    self.conv2 = _conv(arrays, f'{spec.name}/conv2', bias=False)
    self.skip = _conv(arrays, f'{spec.name}/skip') if spec.skip else torch.nn.Identity()
    self.upsample = spec.upsample
    # Where this block's (bias, scale) pairs start in the MLP output, and their widths.
    self.offset, self.cin, self.cout, self.eps = offset, cin, cout, eps

  def _up(self, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode='nearest') if self.upsample else x

  def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    o, cin, cout = self.offset, self.cin, self.cout
    h = F.relu(_adain(x, params[:, o:o + cin], params[:, o + cin:o + 2 * cin], self.eps))
    h = self.conv1(self._up(h))
    o = o + 2 * cin
    h = self.conv2(F.relu(_adain(h, params[:, o:o + cout], params[:, o + cout:o + 2 * cout], self.eps)))
    return h + self._up(self.skip(x))


class LPDFrameNet(torch.nn.Module):
  """Crops (N, 3, S, S) in [-1, 1] -> (image (N, 3, S, S) in [-1, 1], mask (N, 1, S, S)); the person baked in."""

  def __init__(self, arrays: Mapping[str, np.ndarray], cfg: LPDConfig):
    super().__init__()
    self.pose = torch.nn.ModuleList([PoseStage(arrays, convs, residual)
                                     for convs, residual in lpd_export.pose_plan(cfg)])
    self.classifier = _linear(arrays, 'pose/classifier')
    self.mlp0, self.mlp2 = _linear(arrays, 'mlp0'), _linear(arrays, 'mlp2')
    self.register_buffer('constant', _tensor(np.transpose(arrays['constant'], (2, 0, 1)))[None])
    blocks, offset, channels = [], 0, cfg.adain_channels
    for index, spec in enumerate(lpd_export.decoder_plan(cfg)):
      cin, cout = channels[2 * index], channels[2 * index + 1]
      blocks.append(DecoderBlock(arrays, spec, offset, cin, cout, cfg.adain_eps))
      offset += 2 * (cin + cout)
    self.blocks = torch.nn.ModuleList(blocks)
    self.head_offset, self.head_channels, self.eps = offset, channels[-1], cfg.adain_eps
    self.head = _conv(arrays, 'head')

  def forward(self, crops: torch.Tensor):
    x = (crops + 1) / 2
    for stage in self.pose:
      x = stage(x)
    pose = self.classifier(x.mean(dim=(2, 3)))
    params = self.mlp2(F.relu(self.mlp0(pose)))
    x = self.constant.expand(crops.shape[0], -1, -1, -1)
    for block in self.blocks:
      x = block(x, params)
    o, c = self.head_offset, self.head_channels
    x = F.relu(_adain(x, params[:, o:o + c], params[:, o + c:o + 2 * c], self.eps))
    t = torch.tanh(self.head(x))
    mask = 0.5 * t[:, 3:] + 0.5
    return (0.75 * t[:, :3] + 0.5) * mask * 2 - 1, mask


def write_torchscript(animator, avatar, path) -> pathlib.Path:
  """The person's folded network as a TorchScript file (written to a temporary name, then renamed)."""
  return torchscript_io.save_scripted(LPDFrameNet(lpd_export.fold(animator, avatar), animator.cfg), path)


def run_torchscript(path):
  """A callable crops (N, S, S, 3) -> {'image': (N, S, S, 3), 'mask': (N, S, S, 1)} of a written file."""
  runner = torchscript_io.image_runner(path)

  def run(crops: np.ndarray) -> Dict[str, np.ndarray]:
    image, mask = runner(crops)
    return {'image': image, 'mask': mask}
  return run
