r"""Inference benchmark at the paper configuration (256^2, batch 1, CPU): per-frame latency of every
runtime the avatar can be shipped in, avatar-init latency, model sizes and quantised quality.

    python bench/inference.py [--runs 30] [--threads N] [--out_dir DIR] [--original_repo PATH]
                              [--params DIR] [--source photo.jpg] [--fsth_reference PATH] [--fsth_only]
                              [--lpd_reference PATH]

Rows (median of --runs after warm-up; runtimes run alternately so they see the same machine load):
  JAX jit, unfolded    BilayerGenerator.render (keypoint MLP + AdaBN trunk + warp), the training graph
  JAX jit, folded      folding.frame_forward of the avatar's static network (low-res upsample-convs):
                       what Animator.render runs
  TFLite fp32/fp16/dynamic/int8   the exported per-frame models on the LiteRT interpreter (threads = N)
  PyTorch              torch_frame_net.FrameNet (eager, torch.set_num_threads(N))
  ONNX Runtime fp32/fp16   the exported .onnx models (onnx_export: opset 17, bordered-gather warp) on ONNX
                       Runtime's CPU execution provider (intra-op threads = N)
  FSTH per frame      the few-shot talking-head model bi-layer was made to beat, at its reference size
                       (256² inference crops): the landmark sketch drawn + the generator (FSTHAnimator.render),
                       and the generator alone; random weights (its cost does not depend on them)
  FSTH reference       with --fsth_reference PATH (a checkout of vincent-thevenin/Realistic-Neural-Talking-
                       Head-Models): its own Generator(256), eval mode, torch.no_grad, on the same sketch
  LPD per frame        the landmark-free latent-pose model at its official size: the pose encoder (MobileNetV2)
                       on the driver's 256² face crop + the generator (LPDAnimator.render), random weights
  LPD reference        with --lpd_reference PATH (a checkout of shrubb/latent-pose-reenactment): its own
                       embedder's pose encoder + generator, eval mode, torch.no_grad, on the same crop
                       (loaded by tests/fixtures/lpd_small/reference.py with torchvision's definitions)
With --original_repo, the original's own per-frame path (keypoint MLP, gen_inf, grid_sample, add) runs
on the same weights as the baseline (as in bench/forward.py). Weights are random with calibrated BN
statistics (official weights cannot be downloaded here), or with --params those of a bilayer_jax params
directory (trained, or imported official weights) at its own config; the photo is scikit-image's
astronaut (or --source) and the poses come from the in-package talking-face clip, so quality figures use
real inputs. PSNR is of each runtime's image against fp32 JAX over those poses; "LF PSNR" is the same for
the low-frequency layer alone (the model exported again with a zero texture, so image = LF), which
separates the trunk's error from the warp's: an untrained network's warp field is far rougher than a
trained one's (the script prints its mean uv step between neighbouring pixels), and the warp turns every
uv error into |texture gradient| of image error. Without --original_repo the baseline is the original's
reference figure (docs/benchmarks.md#the-originals-reference-figures).
"""

import argparse
import dataclasses
import os
import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np

from bilayer_jax import export as export_cli
from bilayer_jax import model_io
from bilayer_jax import xla_cpu
from bilayer_jax.families.fsth import objective as fsth_objective
from bilayer_jax.families.fsth import training as fsth_training
from bilayer_jax.families.lpd import objective as lpd_objective
from bilayer_jax.families.lpd import training as lpd_training
from bilayer_jax.inference import animator as animator_lib
from bilayer_jax.inference import fsth_animator
from bilayer_jax.inference import lpd_animator
from bilayer_jax.inference import onnx_export
from bilayer_jax.inference import folding
from bilayer_jax.inference import preprocess
from bilayer_jax.inference import tflite_export
from bilayer_jax.inference import video
from bilayer_jax.models import config as model_config
from bilayer_jax.models.bilayer import BilayerGenerator
from bilayer_jax.models.config import BilayerConfig
from bilayer_jax.models.fsth.config import FSTHConfig
from bilayer_jax.models.lpd.config import LPDConfig
import forward as forward_bench  # bench/forward.py (this script's folder is on sys.path)

ORIGINAL_PER_FRAME_S = 0.050  # docs/benchmarks.md#the-originals-reference-figures



# The torchvision wheel whose model definitions the LPD reference loader uses (tests/fixtures/lpd_small).
TORCHVISION_WHEEL = '/opt/pypi-more/files/torchvision-0.28.0-cp311-cp311-manylinux_2_28_x86_64.whl'

def _medians(fns, runs):
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(runs):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def calibrated_variables(cfg):
  """Random paper-config variables with BN statistics calibrated by one standing-statistics pass (as
  bench/forward.py: uncalibrated random nets produce denormals that slow PyTorch down ~20x)."""
  gen = BilayerGenerator(cfg)
  batch = forward_bench._inputs(cfg)  # pylint: disable=protected-access
  gen_vars = jax.jit(lambda: gen.init(jax.random.PRNGKey(0), {**batch}, pred_source_data=True, enhance=True))()
  _, stats = jax.jit(lambda v, b: gen.apply(v, b, train=model_config.BASE_NETWORKS + ('texture_enhancer',),
                                            pred_source_data=True, enhance=True, mutable=['batch_stats']))(
                                                gen_vars, {**batch, 'target_imgs': batch['source_imgs']})
  return {**gen_vars, **stats}, batch


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--runs', type=int, default=30)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--out_dir', default=None)
  parser.add_argument('--original_repo', default=None,
                      help='checkout of saic-violet/bilayer-model: its per-frame path as a same-run baseline')
  parser.add_argument('--params', default=None,
                      help='bilayer_jax params directory (default: random paper-config weights)')
  parser.add_argument('--source', default=None, help='source photo (default: scikit-image astronaut)')
  parser.add_argument('--fsth_only', action='store_true',
                      help='only the FSTH rows and the bi-layer JAX rows they are compared with (no exports)')
  parser.add_argument('--fsth_reference', default=None,
                      help='checkout of vincent-thevenin/Realistic-Neural-Talking-Head-Models: its generator per frame')
  parser.add_argument('--lpd_reference', default=None,
                      help='checkout of shrubb/latent-pose-reenactment: its pose encoder + generator per frame')
  return parser.parse_args()


def _lpd_rows(crop: np.ndarray, reference_repo=None) -> dict:
  """Per-frame functions of the LPD model at its official size (see the module docstring)."""
  cfg = LPDConfig()
  variables = lpd_training.init_variables(lpd_objective.StepConfig(model=cfg, num_video_rows=1), 0, None)
  anim = lpd_animator.LPDAnimator(cfg, variables['generator'], chunk=1)
  identity = jax.device_put(np.random.default_rng(0).normal(0, 1, (1, cfg.identity_dim)).astype(np.float32))
  avatar = lpd_animator.LPDAvatar(identity=identity, sources=[])
  rows = {'LPD per frame (pose encoder + generator)': lambda: anim.render(avatar, crop)}
  if reference_repo:
    rows['LPD reference (PyTorch)'] = _lpd_reference_row(reference_repo, crop, np.asarray(identity))
  return rows


def _lpd_reference_row(checkout, crop, identity):
  """The official pose encoder + generator per frame at the official size (unpatched torchvision)."""
  import sys  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests', 'fixtures',
                                  'lpd_small'))
  import reference as lpd_reference  # pylint: disable=g-import-not-at-top  (the LPD fixture generator's loader)
  workdir = tempfile.mkdtemp(prefix='lpd_reference_')
  ref = lpd_reference.load_reference(pathlib.Path(checkout), pathlib.Path(TORCHVISION_WHEEL), pathlib.Path(workdir))
  lpd_reference.use_torchvision(ref.torchvision['full'])
  args = lpd_reference.full_args()
  embedder, generator = ref.embedder.Wrapper.get_net(args).eval(), ref.generator.Wrapper.get_net(args).eval()
  pose = torch.from_numpy(np.ascontiguousarray(np.moveaxis((crop + 1) / 2, -1, 1)).astype(np.float32))[:, None]
  embeds = torch.from_numpy(identity)

  def run():
    with torch.no_grad():
      data = {'pose_input_rgbs': pose, 'embeds': embeds}
      embedder.get_pose_embedding(data)
      generator(data)
  return run


def _fsth_rows(pose, reference_repo=None) -> dict:
  """Per-frame functions of the FSTH model at its reference size (see the module docstring)."""
  cfg = FSTHConfig(image_size=256)
  variables = fsth_training.init_variables(fsth_objective.MetaStepConfig(model=cfg, num_video_rows=1), 0, None)
  anim = fsth_animator.FSTHAnimator(cfg, variables['generator'], chunk=1)
  embedding = jax.device_put(np.abs(np.random.default_rng(0).normal(0, 0.3, cfg.embedding_dim)).astype(np.float32))
  avatar = fsth_animator.FSTHAvatar(embedding=embedding, sources=[])
  sketch = jax.device_put(anim.sketches(pose))
  rows = {'FSTH per frame (sketch + generator)': lambda: anim.render(avatar, pose),
          'FSTH generator alone (JAX jit)': lambda: anim._render_fn(  # pylint: disable=protected-access
              anim.variables, embedding, sketch).block_until_ready()}
  if reference_repo:
    rows['FSTH reference generator (PyTorch)'] = _fsth_reference_row(reference_repo, np.asarray(sketch),
                                                                     np.asarray(embedding))
  return rows


def _fsth_reference_row(checkout, sketch, embedding):
  """The reference's Generator(256) per frame, loaded by the FSTH fixture generator's unpatched loader."""
  import sys  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests', 'fixtures',
                                  'fsth_small'))
  import generate as fsth_generate  # pylint: disable=g-import-not-at-top  (tests/fixtures/fsth_small/generate.py)
  model = fsth_generate.load_reference(pathlib.Path(checkout), 1)
  generator = model.Generator(256).eval()
  g_y = torch.from_numpy(np.moveaxis((sketch + 1) / 2, -1, 1).astype(np.float32))
  e_hat = torch.from_numpy(embedding[None, :, None])

  def run():
    with torch.no_grad():
      generator(g_y, e_hat)
  return run


def _median_seconds(fn, repeats: int = 3) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _avatar_init_seconds(anim, source) -> dict:
  """Median avatar set-up time in JAX, without and with the enhancer."""
  init_s = {}
  for enhance in (False, True)[:1 + anim.has_enhancer]:
    anim.init_avatar(source, enhance=enhance)  # compile
    name = 'avatar init' + (' + enhancer' if enhance else '')
    init_s[name] = _median_seconds(lambda e=enhance: anim.init_avatar(source, enhance=e).texture.block_until_ready())
  return init_s


def _jax_rows(anim, avatar, net, pose) -> dict:
  """Per-frame functions of JAX: the unfolded render and the folded network (two upsampling variants)."""
  unfolded = lambda: anim._render_fn(anim.variables, avatar.as_dict(), pose)['imgs'].block_until_ready()  # pylint: disable=protected-access
  arrays = {k: jax.device_put(v) for k, v in net.arrays.items()}
  folded_fns = {lr: jax.jit(lambda p, lr=lr: folding.frame_forward(net.spec, arrays, p,
                                                                   low_res_upsample_conv=lr)['image'])
                for lr in (True, False)}
  return {'JAX jit, unfolded': unfolded,
          'JAX jit, folded': lambda: folded_fns[True](pose).block_until_ready(),
          'JAX jit, folded (plain upsample)': lambda: folded_fns[False](pose).block_until_ready()}


def _exported_rows(runtime, quantizations, export, open_runner, render_all, net, poses, reference, lf_reference,
                   table):
  """Every quantisation of one export format, and a texture-free copy of each for the low-frequency PSNR:
  fills `table` (quality, lf_quality, sizes) and returns the per-frame functions, named '<runtime> <q>'.

  export(model, quantize, suffix) writes a file and returns its path; open_runner(path) loads it;
  render_all(runner) renders all `poses`."""
  lf_net = dataclasses.replace(net, arrays={**net.arrays, 'texture': np.zeros_like(net.arrays['texture'])})
  fns = {}
  for quantize in quantizations:
    name = f'{runtime} {quantize if quantize != "none" else "fp32"}'
    for model, ref, column in ((net, reference, 'quality'), (lf_net, lf_reference, 'lf_quality')):
      path = export(model, quantize, '' if model is net else '_lf')
      runner = open_runner(path)
      table[column][name] = export_cli.psnr(render_all(runner), ref)
      if model is net:
        fns[name] = lambda runner=runner: runner(poses[:1])
        table['sizes'][name] = os.path.getsize(path)
  return fns


def _tflite_rows(net, poses, out_dir, threads, reference, lf_reference, table):
  """The TFLite quantisations on LiteRT (batch-1 models: all poses one by one)."""
  export = lambda model, quantize, suffix: tflite_export.export_frame_model(
      model, os.path.join(out_dir, f'frame_{quantize}{suffix}.tflite'), quantize, representative_poses=poses)
  return _exported_rows('TFLite', tflite_export.QUANTIZATIONS, export,
                        lambda path: tflite_export.LiteRunner(path, num_threads=threads),
                        lambda runner: np.concatenate([runner(poses[i:i + 1])[0] for i in range(len(poses))]),
                        net, poses, reference, lf_reference, table)


def _onnx_rows(net, poses, out_dir, threads, reference, lf_reference, table):
  """The ONNX exports (fp32, fp16) on ONNX Runtime's CPU execution provider."""
  export = lambda model, quantize, suffix: onnx_export.export_frame_model(
      model, os.path.join(out_dir, f'frame_{quantize}{suffix}.onnx'), quantize)
  return _exported_rows('ONNX Runtime', onnx_export.QUANTIZATIONS, export,
                        lambda path: onnx_export.OrtRunner(path, num_threads=threads),
                        lambda runner: runner(poses)[0], net, poses, reference, lf_reference, table)


def _torch_row(net, poses, out_dir, reference, table):
  """The standalone PyTorch per-frame module: quality, TorchScript size, and its per-frame function."""
  import torch  # pylint: disable=g-import-not-at-top
  from bilayer_jax.inference import torch_frame_net  # pylint: disable=g-import-not-at-top
  module = torch_frame_net.FrameNet.from_folded(net)
  with torch.no_grad():
    images = np.concatenate([module(torch.from_numpy(poses[i:i + 1]))[0].permute(0, 2, 3, 1).numpy()
                             for i in range(len(poses))])
  table['quality']['PyTorch'] = export_cli.psnr(images, reference)
  torch_path = os.path.join(out_dir, 'frame.pt')
  torch.jit.save(torch.jit.script(module), torch_path)
  table['sizes']['PyTorch'] = os.path.getsize(torch_path)
  torch_pose = torch.from_numpy(poses[:1])

  def torch_call():
    with torch.no_grad():
      module(torch_pose)
  return {'PyTorch': torch_call}


def _tflite_init_rows(anim, source, out_dir, threads, table):
  """The avatar-init TFLite models: export time, size and median run time."""
  init_inputs = (source.imgs[:, 0], source.segs[:, 0], source.stickmen[:, 0], source.poses[:, 0])
  for enhance in (False, True)[:1 + anim.has_enhancer]:
    name = 'TFLite avatar init' + (' + enhancer' if enhance else '') + ' fp32'
    start = time.perf_counter()
    init_path = tflite_export.export_init_model(
        anim.cfg, anim.variables, os.path.join(out_dir, f'init{"_enhance" if enhance else ""}.tflite'),
        enhance=enhance)
    table['export_s'][name] = time.perf_counter() - start
    table['sizes'][name] = os.path.getsize(init_path)
    init_runner = tflite_export.LiteRunner(init_path, num_threads=threads)
    init_runner(*init_inputs)  # allocation and first-run costs
    table['init_s'][name] = _median_seconds(lambda r=init_runner: r(*init_inputs))


def _print_tables(medians, baseline, label, table, uv_step_px, out_dir):
  print(f'\n{"per-frame runtime":34s} {"ms":>8s} {label:>24s} {"PSNR vs JAX":>12s} {"LF PSNR":>8s} '
        f'{"size MB":>8s}')
  for name, seconds in medians.items():
    psnr = f'{table["quality"][name]:.1f} dB' if name in table['quality'] else ''
    lf_psnr = f'{table["lf_quality"][name]:.1f} dB' if name in table['lf_quality'] else ''
    size = f'{table["sizes"][name] / 1e6:.2f}' if name in table['sizes'] else ''
    print(f'{name:34s} {seconds * 1e3:8.1f} {seconds / baseline:23.2f}x {psnr:>12s} {lf_psnr:>8s} {size:>8s}')
  print(f'warp field of this avatar: mean uv step between neighbouring pixels {uv_step_px:.2f} px '
        '(the rougher, the more quantised uv errors cost; see README "int8 quality")')
  print(f'\n{"per-avatar":34s} {"s":>8s}')
  for name, seconds in table['init_s'].items():
    print(f'{name:34s} {seconds:8.2f}')
  print(f'\n{"per-avatar model":34s} {"MB":>8s} {"export s":>9s}')
  for name, seconds in table['export_s'].items():
    print(f'{name:34s} {table["sizes"][name] / 1e6:8.1f} {seconds:9.1f}')
  print(f'files in {out_dir}')


def main():
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  args = _parse_args()
  out_dir = args.out_dir or tempfile.mkdtemp(prefix='bilayer_bench_')
  import skimage.data  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  if args.params:
    cfg, params_variables, _ = model_io.load_params(args.params)
    variables, batch = params_variables['generator'], forward_bench._inputs(cfg)  # pylint: disable=protected-access
  else:
    cfg = BilayerConfig()
    variables, batch = calibrated_variables(cfg)
  print(f'{args.params or "random paper-config weights"}: {cfg.image_size}^2, batch 1, {args.threads} threads, '
        f'jax {jax.__version__} on {jax.devices()[0].platform}')
  anim = animator_lib.Animator(cfg, variables,
                               preprocessor=preprocess.FacePreprocessor(cfg.image_size, landmarks='dlib'), chunk=1)
  photo = video.read_image(args.source) if args.source else skimage.data.astronaut()
  source = anim.preprocessor.source(photo, name=args.source or 'astronaut')
  table = {'quality': {}, 'lf_quality': {}, 'sizes': {}, 'init_s': _avatar_init_seconds(anim, source),
           'export_s': {}}
  avatar = anim.init_avatar(source, enhance=False)
  net = anim.fold(avatar)
  poses = export_cli.driver_poses(anim, max_frames=60)
  outputs = folding.frame_forward(net.spec, net.arrays, poses)
  reference, lf_reference = np.asarray(outputs['image']), np.asarray(outputs['lf'])
  uv_step_px = float(np.abs(np.diff(np.asarray(outputs['uv']), axis=2)).mean()) * cfg.image_size / 2
  fns = _jax_rows(anim, avatar, net, poses[:1])
  if not args.fsth_only:
    fns.update({**_tflite_rows(net, poses, out_dir, args.threads, reference, lf_reference, table),
                **_onnx_rows(net, poses, out_dir, args.threads, reference, lf_reference, table),
                **_torch_row(net, poses, out_dir, reference, table)})
    _tflite_init_rows(anim, source, out_dir, args.threads, table)
  fns.update(_fsth_rows(poses[:1], args.fsth_reference))
  crop = source.imgs[0] if cfg.image_size == 256 else np.zeros((1, 256, 256, 3), np.float32)
  fns.update(_lpd_rows(crop, args.lpd_reference))
  if args.original_repo:
    fns['original PyTorch (this run)'] = forward_bench.bench_original(
        args.original_repo, cfg, {'generator': variables}, batch)['per-frame render']
  medians = _medians(fns, args.runs)
  baseline = medians.get('original PyTorch (this run)', ORIGINAL_PER_FRAME_S)
  label = 'vs original (this run)' if args.original_repo else 'vs original 50 ms @ 256^2'
  _print_tables(medians, baseline, label, table, uv_step_px, out_dir)
  print(f'FSTH per frame / bi-layer folded per frame (both JAX, this run): '
        f'{medians["FSTH per frame (sketch + generator)"] / medians["JAX jit, folded"]:.1f}x')
  print(f'LPD per frame / bi-layer folded per frame (both JAX, this run): '
        f'{medians["LPD per frame (pose encoder + generator)"] / medians["JAX jit, folded"]:.1f}x')


if __name__ == '__main__':
  main()
