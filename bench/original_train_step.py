r"""Same-run baseline for bench/train_step.py: the ORIGINAL's base-stage training iteration on the CPU.

    python bench/original_train_step.py --original_repo PATH --args_json FILE [--steps 3] [--threads N]
                                        [--profile]

bench/train_step.py runs this as its own subprocess, so the peak RSS is the original's alone and no JAX is
imported here. It prints one `RESULT {json}` line. The original's code is imported at run time from the
user's checkout (saic-violet/bilayer-model). None of it is copied or changed.

What runs: `runners/default.py` `RunnerWrapper(args)` in training mode, built from --args_json. The caller
writes that file: the base script's arguments as argparse parses them
(`bilayer_jax.convert.original.paper_args('base')`), so harmonics and source-pose embedding are on. The
caller changes batch_size to 1, num_gpus to 0 (CPU), world_size to 1 and losses_test to '' (see below). One
source frame and one target frame, 256^2, paper widths, random inputs. Each timed iteration does what the
body of train.py's loop does: zero_grad on every optimizer from `runner.get_optimizers(args)` (Adam for the
four generator networks and the discriminator), `loss = runner(data_dict)`, `loss.backward()`, then
`opt.step()` on every optimizer. The runner forward runs identity_embedder, texture_generator,
keypoints_embedder, inference_generator and discriminator (two D passes). After it come the losses
adversarial, feature_matching, perceptual (VGG19 and VGGFace), pixelwise, segmentation and
warping_regularizer (its weight is 0). The released discriminator update is a no-op: its forward leaves D's
parameters with requires_grad=False, so D gets no gradient and its Adam step skips every parameter. The
result reports, for each network, how many parameter tensors got a gradient. Reported: the median iteration
time over --steps after one warm-up iteration, its forward/backward/optimizer split, the process CPU seconds
per iteration, and the peak RSS. With --profile (bench/step_profile.py), also the self time of one more
iteration's PyTorch operators by kind (`OP_KINDS`), from torch.profiler.

Shims, made at run time (sys.modules and a temp dir) for what cannot run here:
  * `apex`: a stub module whose `parallel.SyncBatchNorm` is a class nothing is an instance of.
    `runners/utils.set_batchnorm_momentum` imports apex unconditionally in training mode. NVIDIA apex is
    not pip-installable.
  * `torchvision.models.vgg16/vgg19`: real torchvision with `pretrained` dropped (there is no network to
    download weights). If torchvision is missing or cannot be imported with this torch, a stub builds
    torchvision's VGG layout and init (`features`, `avgpool`, `classifier`). Either way the weights are
    random, in the real architectures.
  * `pretrained_weights/perceptual/vgg16_face_caffe.pth`: a random VGG16 state_dict, written under a temp
    `project_dir`.
  * losses_test is emptied. In training mode the runner also builds the test metrics (LPIPS, CSIM). They
    need weight files, and lpips.py needs scikit-image's removed `compare_ssim`. No training iteration
    evaluates them.
train.py itself is not imported. Its argument setup imports the dataset module, which is a SyntaxError in
Python 3 (docs/original_bugs.md#launch-and-environment-breakages). logger.py is not imported either, so
the tensorboardX it needs is not shimmed. Data loading, logging, test passes and checkpoints are outside
the iteration anyway.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import types

import numpy as np
import torch
from torch import nn

_VGG_WIDTHS = {  # torchvision's `features` layouts ('M' = 2x2 max pooling)
    'vgg16': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
    'vgg19': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M',
              512, 512, 512, 512, 'M'),
}


def _stub_vgg(arch: str, num_classes: int = 1000) -> nn.Module:
  """torchvision's VGG architecture and init (random weights): used only when torchvision is missing."""
  layers, channels = [], 3
  for width in _VGG_WIDTHS[arch]:
    if width == 'M':
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
      channels = width
  net = nn.Module()
  net.features = nn.Sequential(*layers)
  net.avgpool = nn.AdaptiveAvgPool2d(7)
  net.classifier = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096),
                                 nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes))
  for m in net.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
      nn.init.normal_(m.weight, 0, 0.01)
      nn.init.zeros_(m.bias)
  return net


def install_shims(project_dir: str) -> str:
  """Makes the original's training imports work offline on the CPU; returns how VGGs are provided."""
  apex = types.ModuleType('apex')
  apex.parallel = types.ModuleType('apex.parallel')
  apex.parallel.SyncBatchNorm = type('SyncBatchNorm', (), {})  # never instantiated: no multi-GPU here
  sys.modules.update({'apex': apex, 'apex.parallel': apex.parallel})
  try:
    from torchvision import models  # pylint: disable=g-import-not-at-top
    real = {arch: getattr(models, arch) for arch in _VGG_WIDTHS}
    for arch, fn in real.items():  # `pretrained=True` would download; keep the architecture, random weights
      setattr(models, arch, lambda pretrained=False, _fn=fn, **kw: _fn(weights=None, **kw))
    source = 'torchvision (random weights)'
  except (ImportError, RuntimeError):  # missing, or built for another torch (its C ops fail to register)
    models = types.ModuleType('torchvision.models')
    for arch in _VGG_WIDTHS:
      setattr(models, arch, lambda pretrained=False, _arch=arch, **kw: _stub_vgg(_arch, **kw))
    tv = types.ModuleType('torchvision')
    tv.models = models
    sys.modules.update({'torchvision': tv, 'torchvision.models': models})
    source = 'stub of torchvision\'s VGG layout (no usable torchvision here; random weights)'
  # The original loads VGGFace from <project_dir>/pretrained_weights/perceptual/ into a 1000-class VGG16.
  weights_dir = os.path.join(project_dir, 'pretrained_weights', 'perceptual')
  os.makedirs(weights_dir, exist_ok=True)
  torch.save(models.vgg16().state_dict(), os.path.join(weights_dir, 'vgg16_face_caffe.pth'))
  return source


def _inputs(args, seed: int = 0) -> dict:
  """Random inputs of train.py's data dict: B x T x C x H x W images, B x T x 136 poses, in [-1, 1]."""
  rng = np.random.default_rng(seed)
  b, s = args.batch_size, args.image_size
  img = lambda t, c: torch.from_numpy(rng.uniform(-1, 1, (b, t, c, s, s)).astype(np.float32))
  seg = lambda t: (img(t, 1) > 0).float()
  pose = lambda t: torch.from_numpy(rng.uniform(-1, 1, (b, t, args.pse_in_channels)).astype(np.float32))
  n, t = args.num_source_frames, args.num_target_frames
  return {'source_imgs': img(n, 3), 'source_segs': seg(n), 'source_stickmen': img(n, 3), 'source_poses': pose(n),
          'target_imgs': img(t, 3), 'target_segs': seg(t), 'target_stickmen': img(t, 3), 'target_poses': pose(t)}


def measure(repo: str, args_dict: dict, steps: int, threads: int, profile: bool = False) -> dict:
  """Builds the original's runner and optimizers and times its training iteration."""
  torch.set_num_threads(threads)
  with tempfile.TemporaryDirectory(prefix='bilayer_orig_') as project_dir:  # ~0.5 GB VGGFace file: remove it
    vgg_source = install_shims(project_dir)
    return _measure(repo, args_dict, steps, project_dir, vgg_source, profile)


def _measure(repo: str, args_dict: dict, steps: int, project_dir: str, vgg_source: str, profile: bool) -> dict:
  sys.path.insert(0, os.path.abspath(repo))
  import importlib  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(**{**args_dict, 'project_dir': project_dir, 'torch_home': project_dir})
  torch.manual_seed(args.random_seed)  # as train.py does
  runner = importlib.import_module(f'runners.{args.runner_name}').RunnerWrapper(args)
  opts = runner.get_optimizers(args)
  runner.train()
  inputs = _inputs(args)

  def iteration():
    cpu_start, times = time.process_time(), [time.perf_counter()]
    for opt in opts.values():
      opt.zero_grad()
    loss = runner(dict(inputs))  # a fresh dict each time, as the dataloader gives; networks add outputs to it
    times.append(time.perf_counter())
    loss.backward()
    times.append(time.perf_counter())
    for opt in opts.values():
      opt.step(None)
    times.append(time.perf_counter())
    return loss.item(), np.append(np.diff(times), time.process_time() - cpu_start)

  loss, _ = iteration()  # warm-up
  # Which parameters the released code actually trains: [tensors with a gradient, all tensors] after warm-up.
  count = lambda module: [sum(p.grad is not None for p in module.parameters()), len(list(module.parameters()))]
  grads = {name: count(net) for name, net in runner.nets.items()}
  grads['perceptual VGGs (not optimised)'] = count(runner.losses['perceptual'])
  splits = []
  for _ in range(steps):
    loss, split = iteration()
    splits.append(split)
  assert np.isfinite(loss), loss
  peak_tensor_gb = _peak_tensor_gb(iteration)
  op_kinds = _op_kind_seconds(iteration) if profile else None
  total = [float(s[:3].sum()) for s in splits]
  fwd, bwd, opt, cpu = (statistics.median(float(s[i]) for s in splits) for i in range(4))
  return {'step_s': statistics.median(total), 'step_min_s': min(total), 'forward_s': fwd, 'backward_s': bwd,
          'optimizer_s': opt, 'cpu_s': cpu, 'threads': torch.get_num_threads(), 'torch': torch.__version__,
          'vgg': vgg_source, 'losses': sorted(runner.losses_history[True]), 'params_with_grad': grads, 'loss': loss,
          'image_size': args.image_size, 'batch': args.batch_size, 'peak_tensor_gb': peak_tensor_gb,
          'op_kind_s': op_kinds,
          'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _peak_tensor_gb(iteration) -> float:
  """Peak memory of the live tensors (parameters, gradients, optimiser states, activations) during one more
  iteration, from PyTorch's profiler (its memory timeline, by category, summed at each instant)."""
  import torch.profiler  # pylint: disable=g-import-not-at-top
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                              record_shapes=True, with_stack=True) as profiler:
    iteration()
  with tempfile.TemporaryDirectory(prefix='bilayer_orig_mem_') as tmp:
    path = os.path.join(tmp, 'timeline.json')
    profiler.export_memory_timeline(path, device='cpu')
    with open(path, 'rt') as f:
      _, sizes = json.load(f)
  return max(sum(s) for s in sizes) / 2**30


# PyTorch operators by kind, for --profile: the first kind whose name fragment is in the operator's name.
OP_KINDS = (('convolution backward', ('convolution_backward',)),
            ('convolution forward', ('mkldnn_convolution', 'convolution')),
            ('matmul', ('aten::mm', 'aten::bmm', 'aten::addmm', 'aten::addmv', 'aten::matmul', 'aten::linear')),
            ('batch norm', ('batch_norm',)),
            ('optimizer', ('Optimizer', 'lerp', 'addcdiv', 'aten::sqrt')))


def _op_kind_seconds(iteration) -> dict:
  """Self CPU seconds of one iteration's PyTorch operators, summed by OP_KINDS (the rest as 'other')."""
  import torch.profiler  # pylint: disable=g-import-not-at-top
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
    start = time.perf_counter()
    iteration()
    wall = time.perf_counter() - start
  seconds = {kind: 0.0 for kind, _ in OP_KINDS}
  seconds['other'] = 0.0
  for event in profiler.key_averages():
    kind = next((k for k, fragments in OP_KINDS if any(f in event.key for f in fragments)), 'other')
    seconds[kind] += event.self_cpu_time_total / 1e6
  seconds['iteration (profiled)'] = wall
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--original_repo', required=True, help='checkout of saic-violet/bilayer-model')
  parser.add_argument('--args_json', required=True, help='the original arguments (written by train_step.py)')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--profile', action='store_true', help='also self time by operator kind')
  args = parser.parse_args()
  with open(args.args_json, 'rt') as f:
    args_dict = json.load(f)
  print('RESULT ' + json.dumps(measure(args.original_repo, args_dict, args.steps, args.threads, args.profile)))


if __name__ == '__main__':
  main()
