"""One FSTH person's per-frame generator as a standalone PyTorch module (TorchScript; no bilayer_jax needed to
run it): landmark sketches (N, 3, S, S) in [-1, 1] -> images (N, 3, S, S) in [-1, 1].

    net = FSTHFrameNet.from_arrays(baked_arrays(animator, avatar), animator.cfg)
    write_torchscript(animator, avatar, 'person.pt')      # torch.jit.script + save

`baked_arrays` turns the generator's eval-mode variables into plain tensors: every spectrally normalised
kernel divided by its stored σ = u·(W v) (eval mode does no power iteration), and the person's AdaIN
means and scales cut from ψ (P ê of the photos, or the fine-tuned ψ). The module repeats
`bilayer_jax.models.fsth.networks.Generator` layer for layer in NCHW (tested against it).
"""

import pathlib
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from bilayer_jax.inference import fsth_animator
from bilayer_jax.inference import torchscript_io
from bilayer_jax.models.fsth import blocks
from bilayer_jax.models.fsth.config import FSTHConfig


def _effective_kernel(params, spectral) -> np.ndarray:
  """OIHW kernel divided by its stored spectral-norm estimate (no estimate: the kernel as it is)."""
  kernel = np.asarray(params['kernel'], np.float32)
  oihw = np.transpose(kernel, (3, 2, 0, 1))
  if spectral is None:
    return oihw
  sigma = np.asarray(spectral['u']) @ (oihw.reshape(oihw.shape[0], -1) @ np.asarray(spectral['v']))
  return oihw / sigma


def write_torchscript(animator, avatar, path) -> 'pathlib.Path':
  """The person's generator as a TorchScript file (written to a temporary name, then renamed)."""
  return torchscript_io.save_scripted(FSTHFrameNet.from_arrays(baked_arrays(animator, avatar), animator.cfg), path)


def run_torchscript(path):
  """A callable sketches (N, S, S, 3) -> images (N, S, S, 3) of a file written by `write_torchscript`."""
  runner = torchscript_io.image_runner(path)
  return lambda sketches: runner(sketches)[0]


def baked_arrays(animator, avatar) -> Dict[str, np.ndarray]:
  """{'<module path>/weight' | '/bias' | ...: array} of the person's generator (see the module docstring)."""
  variables = fsth_animator.network_variables(animator.variables, 'generator')
  params, spectral = variables['params'], variables.get('spectral', {})
  psi = np.asarray(params['psi'] if animator.finetuned else params['projection'] @ np.asarray(avatar.embedding))
  arrays: Dict[str, np.ndarray] = {}

  def walk(tree, spec, path):
    if 'kernel' in tree:
      arrays[f'{path}/weight'] = _effective_kernel(tree, spec)
      arrays[f'{path}/bias'] = np.asarray(tree['bias'], np.float32)
      return
    for name, sub in tree.items():
      if isinstance(sub, dict) or hasattr(sub, 'items'):
        walk(sub, (spec or {}).get(name), f'{path}/{name}' if path else name)
      elif name != 'projection' and name != 'psi':
        arrays[f'{path}/{name}' if path else name] = np.asarray(sub, np.float32)

  walk(params, spectral, '')
  slices = blocks.split_adain(psi[None], animator.cfg.adain_sizes)
  for index, piece in enumerate(slices):
    arrays[f'adain{index}'] = np.asarray(piece[0], np.float32)
  return arrays


def _tensor(array) -> torch.Tensor:
  return torch.from_numpy(np.array(array, np.float32))  # a writable copy


def _conv(arrays, path: str) -> torch.nn.Conv2d:
  weight = _tensor(arrays[f'{path}/weight'])
  conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], padding=weight.shape[2] // 2)
  with torch.no_grad():
    conv.weight.copy_(weight)
    conv.bias.copy_(_tensor(arrays[f'{path}/bias']))
  return conv


def _adain(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
  mu = x.mean(dim=(2, 3), keepdim=True)
  std = x.std(dim=(2, 3), keepdim=True, unbiased=True)
  return scale.view(1, -1, 1, 1) * (x - mu) / (std + eps) + mean.view(1, -1, 1, 1)


class ResDown(torch.nn.Module):
  def __init__(self, arrays, path: str, slope: float):
    super().__init__()
    self.conv_l1, self.conv_r1, self.conv_r2 = (_conv(arrays, f'{path}/{n}') for n in ('conv_l1', 'conv_r1',
                                                                                          'conv_r2'))
    self.slope = slope

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    skip = F.avg_pool2d(self.conv_l1(x), 2)
    out = self.conv_r2(F.leaky_relu(self.conv_r1(F.leaky_relu(x, self.slope)), self.slope))
    return skip + F.avg_pool2d(out, 2)


class InstanceNorm(torch.nn.Module):
  def __init__(self, arrays, path: str, eps: float):
    super().__init__()
    self.register_buffer('scale', _tensor(arrays[f'{path}/scale']).view(1, -1, 1, 1))
    self.register_buffer('shift', _tensor(arrays[f'{path}/bias']).view(1, -1, 1, 1))
    self.eps = eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mu) ** 2).mean(dim=(2, 3), keepdim=True)
    return (x - mu) * torch.rsqrt(var + self.eps) * self.scale + self.shift


class SelfAttention(torch.nn.Module):
  def __init__(self, arrays, path: str):
    super().__init__()
    self.conv_f, self.conv_g, self.conv_h = (_conv(arrays, f'{path}/{n}') for n in ('conv_f', 'conv_g', 'conv_h'))
    self.register_buffer('gamma', _tensor(arrays[f'{path}/gamma']))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    f = self.conv_f(x).view(n, -1, h * w)
    g = self.conv_g(x).view(n, -1, h * w)
    attention = torch.softmax(torch.bmm(f.transpose(1, 2), g), dim=1)  # each column sums to one
    out = torch.bmm(self.conv_h(x).view(n, c, h * w), attention).view(n, c, h, w)
    return self.gamma * out + x


class ResAdaIN(torch.nn.Module):
  def __init__(self, arrays, path: str, psi: np.ndarray, cfg: FSTHConfig):
    super().__init__()
    self.conv1, self.conv2 = _conv(arrays, f'{path}/conv1'), _conv(arrays, f'{path}/conv2')
    for name, piece in zip(('mean1', 'std1', 'mean2', 'std2'), np.split(psi, 4)):
      self.register_buffer(name, _tensor(piece))
    self.eps, self.slope = cfg.adain_eps, cfg.leaky_slope

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.conv1(F.leaky_relu(_adain(x, self.mean1, self.std1, self.eps), self.slope))
    return self.conv2(F.leaky_relu(_adain(out, self.mean2, self.std2, self.eps), self.slope)) + x


class ResUp(torch.nn.Module):
  def __init__(self, arrays, path: str, psi: np.ndarray, cin: int, cfg: FSTHConfig, out_size: int):
    super().__init__()
    self.conv_l1, self.conv_r1, self.conv_r2 = (_conv(arrays, f'{path}/{n}') for n in ('conv_l1', 'conv_r1',
                                                                                          'conv_r2'))
    cout = self.conv_r1.out_channels
    for name, piece in zip(('mean1', 'std1', 'mean2', 'std2'), np.split(psi, [cin, 2 * cin, 2 * cin + cout])):
      self.register_buffer(name, _tensor(piece))
    self.eps, self.slope, self.out_size = cfg.adain_eps, cfg.leaky_slope, out_size

  def _up(self, x: torch.Tensor) -> torch.Tensor:
    size: List[int] = [self.out_size, self.out_size] if self.out_size > 0 else [2 * x.shape[2], 2 * x.shape[3]]
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    skip = self.conv_l1(self._up(x))
    out = self.conv_r1(self._up(F.leaky_relu(_adain(x, self.mean1, self.std1, self.eps), self.slope)))
    out = self.conv_r2(F.leaky_relu(_adain(out, self.mean2, self.std2, self.eps), self.slope))
    return out + skip


class FSTHFrameNet(torch.nn.Module):
  """Sketches (N, 3, S, S) in [-1, 1] -> images (N, 3, S, S) in [-1, 1] (the person baked in)."""

  def __init__(self, arrays: Dict[str, np.ndarray], cfg: FSTHConfig):
    super().__init__()
    self.pad = cfg.pad_amount(cfg.image_size)
    self.down = torch.nn.ModuleList([ResDown(arrays, f'res_down{i}', cfg.leaky_slope) for i in range(1, 5)])
    self.norms = torch.nn.ModuleList([InstanceNorm(arrays, f'in{i}', cfg.instance_norm_eps) for i in range(1, 5)])
    self.att_down, self.att_up = SelfAttention(arrays, 'self_att_down'), SelfAttention(arrays, 'self_att_up')
    r = cfg.num_res_blocks
    self.res = torch.nn.ModuleList([ResAdaIN(arrays, f'res{i + 1}', arrays[f'adain{i}'], cfg) for i in range(r)])
    last = len(cfg.up_channels) - 1
    self.ups = torch.nn.ModuleList([
        ResUp(arrays, f'res_up{i + 1}', arrays[f'adain{r + i}'], cin, cfg, cfg.image_size if i == last else 0)
        for i, (cin, _) in enumerate(cfg.up_channels)])
    mean, scale = np.split(arrays[f'adain{r + len(cfg.up_channels)}'], 2)
    self.register_buffer('out_mean', _tensor(mean))
    self.register_buffer('out_scale', _tensor(scale))
    self.conv_out = _conv(arrays, 'conv_out')
    self.eps, self.slope = cfg.adain_eps, cfg.leaky_slope

  @classmethod
  def from_arrays(cls, arrays: Dict[str, np.ndarray], cfg: FSTHConfig) -> 'FSTHFrameNet':
    return cls(arrays, cfg).eval()

  def forward(self, sketches: torch.Tensor) -> torch.Tensor:
    x = (sketches + 1) / 2
    if self.pad > 0:
      x = F.pad(x, [self.pad, self.pad, self.pad, self.pad])
    for index, (down, norm) in enumerate(zip(self.down, self.norms)):
      x = norm(down(x))
      if index == 2:
        x = self.att_down(x)
    for block in self.res:
      x = block(x)
    for index, up in enumerate(self.ups):
      x = up(x)
      if index == 1:
        x = self.att_up(x)
    x = F.leaky_relu(_adain(x, self.out_mean, self.out_scale, self.eps), self.slope)
    return torch.sigmoid(self.conv_out(x)) * 2 - 1
