r"""Inference-side forward benchmark at the paper configuration (256^2, batch 1, fp32, jit).

    python bench/forward.py [--runs 20] [--original_repo PATH] [--threads N]

Times (median of --runs after warm-up, plus jit compile time; with a baseline, both implementations run
alternately so that they see the same machine load):
  * per-frame render: keypoints embedder + inference generator trunk + warp + add (`BilayerGenerator.render`);
  * per-avatar init: identity embedder + texture generator + both projectors (`init_avatar`);
  * the 4-step texture enhancer.
With --original_repo (a checkout of saic-violet/bilayer-model), the same three computations of the ORIGINAL
PyTorch networks run in the same process on the same weights (exported with bilayer_jax's exporter) as the
baseline, and the table reports the ratio. Otherwise the original's reference figures
(docs/benchmarks.md#the-originals-reference-figures) are printed for reference.
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import xla_cpu
from bilayer_jax.convert import original
from bilayer_jax.models import config as model_config
from bilayer_jax.models.bilayer import BilayerGenerator
from bilayer_jax.models.config import BilayerConfig

# The original's reference figures (docs/benchmarks.md#the-originals-reference-figures).
SPEC_REFERENCE_S = {'per-frame render': 0.050, 'avatar init': 0.8, 'texture enhancer (4 steps)': 1.6}


def _median_times(fns, runs):
  """Median seconds of each callable, run alternately so both see the same machine load."""
  for fn in fns:
    fn()  # warm-up (after compilation)
  times = [[] for _ in fns]
  for _ in range(runs):
    for fn, record in zip(fns, times):
      start = time.perf_counter()
      fn()
      record.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def _inputs(cfg, seed=0):
  rng = np.random.default_rng(seed)
  s = cfg.image_size
  img = lambda c: jnp.asarray(rng.uniform(-1, 1, (1, 1, s, s, c)).astype(np.float32))
  return {'source_imgs': img(3), 'source_segs': (img(1) + 1) / 2, 'source_stickmen': img(3),
          'source_poses': jnp.asarray(rng.uniform(-0.8, 0.8, (1, 1, 136)).astype(np.float32)),
          'target_poses': jnp.asarray(rng.uniform(-0.8, 0.8, (1, 1, 136)).astype(np.float32))}


def bench_jax(cfg, variables, batch):
  gen = BilayerGenerator(cfg)
  v = variables['generator']
  init_fn = jax.jit(lambda v, b: gen.apply(v, b['source_imgs'], b['source_segs'], b['source_stickmen'],
                                           method=BilayerGenerator.init_avatar))
  render_fn = jax.jit(lambda v, avatar, poses: gen.apply(v, avatar, poses, method=BilayerGenerator.render))

  def enhance(v, b, avatar):
    def run(module):
      src = module._heads(module.keypoints_embedder(b['source_poses']), avatar['adaptive'], False)
      segs = jax.nn.sigmoid(src['segs_logits'])
      return module.texture_enhancer(avatar['texture'], b['source_imgs'], src['lf_rgbs'], src['uvs'], segs)[0]
    return nn_apply(gen, v, run)

  enhance_fn = jax.jit(enhance)
  compile_s = {}
  start = time.perf_counter()
  avatar = jax.block_until_ready(init_fn(v, batch))
  compile_s['avatar init'] = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(render_fn(v, avatar, batch['target_poses']))
  compile_s['per-frame render'] = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(enhance_fn(v, batch, avatar))
  compile_s['texture enhancer (4 steps)'] = time.perf_counter() - start
  fns = {'per-frame render': lambda: jax.block_until_ready(render_fn(v, avatar, batch['target_poses'])),
         'avatar init': lambda: jax.block_until_ready(init_fn(v, batch)),
         'texture enhancer (4 steps)': lambda: jax.block_until_ready(enhance_fn(v, batch, avatar))}
  return fns, compile_s


def nn_apply(module, variables, fn):
  """Runs `fn(bound_module)` inside `module.apply` (access to submodules and helper methods)."""
  return module.apply(variables, method=lambda m: fn(m))


def bench_original(repo, cfg, variables, batch):
  """The original's networks (from a user checkout) on the same weights; returns median seconds."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(repo))
  import importlib  # pylint: disable=g-import-not-at-top
  from runners import utils as rn_utils  # pylint: disable=g-import-not-at-top
  tmp = pathlib.Path(tempfile.mkdtemp())
  with_enhancer = 'texture_enhancer' in variables['generator']['params']
  networks = model_config.BASE_NETWORKS + ('texture_enhancer',) * with_enhancer
  original.export_run(tmp, 1, cfg, variables, networks, stage='enhancer' if with_enhancer else 'base')
  args = argparse.Namespace(**original.read_args(tmp / 'args.txt'))
  nets = {}
  for name in networks:
    net = importlib.import_module(f'networks.{name}').NetworkWrapper(args)
    net.apply(lambda m: rn_utils.spectral_norm(m, apply_to=['conv2d', 'linear'], eps=args.eps))
    net.load_state_dict(torch.load(tmp / 'checkpoints' / f'1_{name}.pth', map_location='cpu'))
    net.apply(rn_utils.remove_spectral_norm)
    nets[name] = net.eval()
  to_t = lambda x: torch.from_numpy(np.asarray(x)).permute(0, 1, 4, 2, 3).contiguous() if x.ndim == 5 else \
      torch.from_numpy(np.asarray(x))
  data = {k: to_t(v) for k, v in batch.items()}
  data['target_imgs'] = data['source_imgs'].clone()
  order = ['identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator']
  with torch.no_grad():
    for name in order:
      data = nets[name](data, [], nets)
  kp, inf = nets['keypoints_embedder'], nets['inference_generator']
  tex = data['pred_tex_hf_rgbs'][:, 0]
  poses = data['target_poses'].view(1, -1)

  def per_frame():
    with torch.no_grad():
      x = (poses[..., None] * kp.frequencies).view(1, -1)
      emb = kp.net(torch.cat([torch.sin(x), torch.cos(x)], 1))
      out = inf.gen_inf(emb)
      uv = inf.identity_grid + out[0].permute(0, 2, 3, 1)
      return out[1] + F.grid_sample(tex, uv, align_corners=False)

  def init():
    d = {k: v for k, v in data.items()}
    with torch.no_grad():
      for name in ('identity_embedder', 'texture_generator'):
        d = nets[name](d, [], nets)
      inf.prj_inf(d['source_idt_embeds'])

  def enhance():
    d = {k: v for k, v in data.items()}
    d.update(pred_source_uvs=data['pred_target_uvs'], pred_source_delta_lf_rgbs=data['pred_target_delta_lf_rgbs'],
             pred_source_segs=data['pred_target_segs'])
    with torch.no_grad():
      nets['texture_enhancer'](d, [], nets)

  fns = {'per-frame render': per_frame, 'avatar init': init}
  if with_enhancer:
    fns['texture enhancer (4 steps)'] = enhance
  return fns


def main():
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--runs', type=int, default=20)
  parser.add_argument('--original_repo', default=None, help='checkout of saic-violet/bilayer-model (baseline)')
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  args = parser.parse_args()
  cfg = BilayerConfig()
  gen = BilayerGenerator(cfg)
  batch = _inputs(cfg)
  print(f'backend {jax.default_backend()} ({jax.devices()[0].device_kind}), {os.cpu_count()} CPU cores; '
        f'paper config, {cfg.image_size}^2, batch 1, float32')
  gen_vars = jax.jit(lambda: gen.init(jax.random.PRNGKey(0), {**batch}, pred_source_data=True, enhance=True))()
  # Fresh networks have BN statistics (0, 1) that do not fit their activations; calibrate them with one
  # standing-statistics pass (BN in train mode, everything else frozen) so both implementations run on
  # realistic activation ranges (uncalibrated random nets produce denormals that slow PyTorch down a lot,
  # docs/benchmarks.md#other-measurements-behind-code-choices).
  _, stats = jax.jit(lambda v, b: gen.apply(v, b, train=model_config.BASE_NETWORKS + ('texture_enhancer',),
                                            pred_source_data=True, enhance=True, mutable=['batch_stats']))(
                                                gen_vars, {**batch, 'target_imgs': batch['source_imgs']})
  variables = {'generator': {**gen_vars, **stats}}
  ours, compile_s = bench_jax(cfg, variables, batch)
  baseline, label = None, 'original (reference figure, not this run)'
  if args.original_repo:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    baseline, label = bench_original(args.original_repo, cfg, variables, batch), 'original (this run)'
  print(f'\n| stage | bilayer_jax median | jit compile | {label} | ratio |')
  print('|---|---|---|---|---|')
  for name, fn in ours.items():
    runs = args.runs if 'enhancer' not in name else max(5, args.runs // 4)
    if baseline:
      median, reference = _median_times([fn, baseline[name]], runs)
    else:
      (median,), reference = _median_times([fn], runs), SPEC_REFERENCE_S[name]
    print(f'| {name} | {median * 1e3:.1f} ms | {compile_s[name]:.1f} s | {reference * 1e3:.1f} ms | '
          f'{median / reference:.2f}x |', flush=True)


if __name__ == '__main__':
  main()
