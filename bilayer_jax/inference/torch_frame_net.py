"""The folded per-frame network of one avatar as a small standalone PyTorch module (NCHW).

    net = FrameNet.from_folded(animator.fold(avatar))       # or FrameNet.from_folded(FoldedFrameNet.load(npz))
    image, mask = net(poses)                                 # (N, 136) -> (N, 3, S, S), (N, 1, S, S)
    torch.jit.script(net) / torch.export.export(net, (poses,))

Same function as `folding.frame_forward` (keypoint MLP, residual up-blocks of plain convs, heads, bilinear
warp of the baked texture with `F.grid_sample(align_corners=False, padding_mode='zeros')`), written
for PyTorch users and runtimes (TorchScript, torch.export / ExecuTorch); it needs nothing from JAX.
"""

import math
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bilayer_jax.inference import folding
from bilayer_jax.models import layers

LEAKY_SLOPE = 0.2  # literal 0.2 in forward(): TorchScript cannot read module globals


def _conv(kernel_hwio: np.ndarray, bias: Optional[np.ndarray], padding: int = -1) -> nn.Conv2d:
  """HWIO kernel -> Conv2d; padding -1 means "same" (k // 2)."""
  k, _, cin, cout = kernel_hwio.shape
  conv = nn.Conv2d(cin, cout, k, padding=k // 2 if padding < 0 else padding, bias=bias is not None)
  conv.weight.data = torch.from_numpy(np.array(np.transpose(kernel_hwio, (3, 2, 0, 1))))
  if bias is not None:
    conv.bias.data = torch.from_numpy(np.array(bias))
  return conv


def _affine(scale: np.ndarray, shift: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
  return (torch.from_numpy(np.array(scale)).view(1, -1, 1, 1),
          torch.from_numpy(np.array(shift)).view(1, -1, 1, 1))


class UpBlock(nn.Module):
  """affine -> lrelu -> conv1 (norm2 folded in) -> lrelu -> up -> conv2, plus up(1x1 conv(x)).

  conv2(up(h)) runs at the low resolution, as in `folding.frame_forward`: one 2x2 conv with the four output
  phases as channel groups (`layers.upsample_phase_kernel`), then interleaved (16/36 of the multiply-adds).
  """

  def __init__(self, arrays, k: int):
    super().__init__()
    a = lambda name: arrays[f'block{k}_{name}']
    scale, shift = _affine(a('norm1_scale'), a('norm1_shift'))
    self.register_buffer('norm1_scale', scale)
    self.register_buffer('norm1_shift', shift)
    self.conv1 = _conv(a('conv1_kernel'), a('conv1_bias'))
    kernel2 = np.asarray(a('conv2_kernel'), np.float32)
    self.conv2_phases = _conv(layers.upsample_phase_kernel(kernel2), None, padding=1)
    self.register_buffer('conv2_bias', torch.from_numpy(np.array(a('conv2_bias'))).view(1, -1, 1, 1))
    self.skip = _conv(a('skip_kernel')[None, None], a('skip_bias'))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = F.leaky_relu(x * self.norm1_scale + self.norm1_shift, 0.2)
    h = F.leaky_relu(self.conv1(h), 0.2)
    n, _, height, width = h.shape
    z = self.conv2_phases(h)  # (N, 4 C, H + 1, W + 1), channels (a, b, C)
    z = z.view(n, 2, 2, -1, height + 1, width + 1)
    rows = [torch.stack([z[:, a, b, :, a:a + height, b:b + width] for b in (0, 1)], dim=-1) for a in (0, 1)]
    h = torch.stack(rows, dim=3).reshape(n, -1, 2 * height, 2 * width) + self.conv2_bias  # (N, C, H, a, W, b)
    return h + F.interpolate(self.skip(x), scale_factor=2.0, mode='nearest')


class FrameNet(nn.Module):
  """Per-frame network of one avatar: (N, 136) keypoints in [-1, 1] -> image (N, 3, S, S) in [-1, 1]
  (lf + hf, not clamped) and mask (N, 1, S, S) in [0, 1]."""

  def __init__(self, spec: folding.FrameNetSpec, arrays):
    super().__init__()
    if not spec.pred_segmentation:
      raise ValueError('FrameNet needs a network that predicts segmentation (inf_pred_segmentation)')
    self.pose_channels, self.pose_size = spec.pose_channels, spec.pose_size
    freqs = np.float32(math.pi) * (2.0 ** np.arange(spec.num_harmonics)).astype(np.float32)
    self.register_buffer('frequencies', torch.from_numpy(freqs.astype(np.float32)))
    self.use_harmonics = spec.num_harmonics > 0
    mlp: List[nn.Module] = []
    for i in range(spec.num_mlp_layers):
      kernel = arrays[f'mlp{i}_kernel']
      linear = nn.Linear(kernel.shape[0], kernel.shape[1])
      linear.weight.data = torch.from_numpy(np.array(kernel.T))
      linear.bias.data = torch.from_numpy(np.array(arrays[f'mlp{i}_bias']))
      if i:
        mlp.append(nn.LeakyReLU(LEAKY_SLOPE))
      mlp.append(linear)
    self.mlp = nn.Sequential(*mlp)
    self.blocks = nn.ModuleList([UpBlock(arrays, k) for k in range(spec.num_blocks)])
    scale, shift = _affine(arrays['final_scale'], arrays['final_shift'])
    self.register_buffer('final_scale', scale)
    self.register_buffer('final_shift', shift)
    self.heads = _conv(arrays['heads_kernel'], arrays['heads_bias'])
    texture = np.ascontiguousarray(np.transpose(arrays['texture'], (2, 0, 1)))[None]
    self.register_buffer('texture', torch.from_numpy(texture))  # (1, 3, S, S)
    grid = folding.warp.identity_grid(spec.image_size)  # (1, S, S, 2)
    self.register_buffer('identity_grid', torch.from_numpy(grid))

  @classmethod
  def from_folded(cls, net: folding.FoldedFrameNet) -> 'FrameNet':
    return cls(net.spec, net.arrays).eval().requires_grad_(False)

  def heads_output(self, poses: torch.Tensor) -> torch.Tensor:
    """The heads' pre-activations (N, 6, S, S): uv offsets, low-frequency RGB and mask logit."""
    x = poses
    if self.use_harmonics:
      # [sin, cos] of p * pi * 2^j with the frequency varying fastest (keypoints_embedder.harmonic_encoding).
      scaled = (x[:, :, None] * self.frequencies).reshape(x.shape[0], -1)
      x = torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)
    x = self.mlp(x).view(-1, self.pose_channels, self.pose_size, self.pose_size)
    for block in self.blocks:
      x = block(x)
    x = F.leaky_relu(x * self.final_scale + self.final_shift, 0.2)
    return self.heads(x)

  def forward(self, poses: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    y = self.heads_output(poses)
    uv = self.identity_grid + torch.tanh(y[:, 0:2]).permute(0, 2, 3, 1)
    lf = torch.tanh(y[:, 2:5])
    texture = self.texture.expand(poses.shape[0], -1, -1, -1)
    hf = F.grid_sample(texture, uv, mode='bilinear', padding_mode='zeros', align_corners=False)
    return lf + hf, torch.sigmoid(y[:, 5:6])
