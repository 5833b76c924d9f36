"""Notebook-sized steps built on the package: the demo config for a runtime, training with a progress bar
(resuming by itself), a demo model on demand, importing official weights, animating a photo, evaluating, and
exporting an avatar with parity, size and latency figures.
"""

import dataclasses
import functools
import math
import os
import pathlib
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import ml_collections
import numpy as np
import tqdm.auto

from bilayer_jax import export as export_cli
from bilayer_jax import model_io
from bilayer_jax.colab import runtime as runtime_lib
from bilayer_jax.data import input_pipeline
from bilayer_jax.inference import folding
from bilayer_jax.inference import tflite_export
from configs import demo as demo_config_lib
from configs import fsth_demo as fsth_demo_config_lib
from data_prep import demo

def _unit_range(image) -> np.ndarray:
  """A [-1, 1] image as [0, 1] for display."""
  return np.clip((np.asarray(image, np.float32) + 1) / 2, 0, 1)


EXPORT_VARIANTS = {  # name -> (format, TFLite quantisation)
    'tflite_fp32': ('tflite', 'none'), 'tflite_fp16': ('tflite', 'fp16'),
    'tflite_dynamic': ('tflite', 'dynamic'), 'tflite_int8': ('tflite', 'int8'), 'torch': ('torch', None)}


def demo_config(runtime: runtime_lib.Runtime, stage: str = 'base', dataset: str = '',
                data_dir: str = '', family: str = 'bilayer') -> ml_collections.ConfigDict:
  """configs/demo.py for `stage` (family 'fsth': configs/fsth_demo.py, stage 'meta') at the runtime's sizes,
  with a progress bar.

  Logging, evaluation and checkpoint periods follow the stage's planned length (so a resumed run keeps the
  same checkpoint steps, and with them the same data order). `dataset`: a tfds name such as
  'talking_heads/vox2' under `data_dir` (default: the built-in demo dataset).
  """
  sizes = runtime.sizes
  config = fsth_demo_config_lib.get_config() if family == 'fsth' else demo_config_lib.get_config(stage)
  config.batch_size = sizes.batch_size
  length = sizes.enhancer_steps if stage == 'enhancer' else sizes.base_steps
  config.num_steps = length
  if family != 'fsth':
    config.enhancer_num_steps = sizes.enhancer_steps  # stage 'both'
  config.log.every_steps = max(1, length // 20)
  config.log.image_every_steps = config.log.eval_every_steps = max(1, length // 4)
  config.log.checkpoint_every_steps = max(1, length // 2)
  config.log.progress_bar = True
  if dataset:
    config.data.name, config.data.demo = dataset, False
  config.data.data_dir = data_dir
  return config


def grid_columns(config: ml_collections.ConfigDict) -> str:
  """What the columns of the trainer's image grids show, for the config's family and stage."""
  if config.family == 'fsth':
    return 'source | its sketch | target sketch | target | prediction'
  columns = 'source | target | prediction | low-frequency layer | warped texture | texture | mask'
  return columns.replace('| texture |', '| texture | enhanced texture |') if config.stage == 'enhancer' else columns


def prepare_data(config: ml_collections.ConfigDict) -> str:
  """Builds the demo dataset if the config uses it (the first time, a few seconds); returns the data_dir."""
  demo.prepare(config)
  return config.data.data_dir


def preview_batch(config: ml_collections.ConfigDict, count: int = 4):
  """(images, titles) of one training example: source, targets, their stickmen and segmentation masks."""
  dataset = input_pipeline.create_dataset(
      config.data.data_dir, config.data.train_split, image_size=config.model.image_size,
      num_source_frames=config.data.num_source_frames, num_target_frames=config.data.num_target_frames,
      batch_size=1, seed=config.seed, shuffle=False, dataset_name=config.data.name)
  batch = next(dataset.as_numpy_iterator())
  images = [_unit_range(batch['source_imgs'][0, 0]), _unit_range(batch['source_stickmen'][0, 0]),
            batch['source_segs'][0, 0]]
  titles = ['source', 'source keypoints (stickman)', 'source mask']
  for t in range(min(count, config.data.num_target_frames)):
    images += [_unit_range(batch['target_imgs'][0, t]), _unit_range(batch['target_stickmen'][0, t])]
    titles += [f'target {t + 1}', f'target {t + 1} keypoints']
  return images, titles


def train(config: ml_collections.ConfigDict, workdir: os.PathLike) -> Dict[str, Any]:
  """Trains `config.stage` into `workdir` with a progress bar. A workdir that has checkpoints resumes
  from the latest one (after a runtime restart too); interrupting the cell saves a checkpoint and stops."""
  from bilayer_jax.train import loop  # pylint: disable=g-import-not-at-top
  prepare_data(config)
  summary = loop.train_and_evaluate(config, str(workdir))
  stage = 'enhancer' if config.stage == 'both' else config.stage  # 'both' reports its last stage
  stage_dir = pathlib.Path(workdir) / ('enhancer' if config.stage == 'both' else '')
  print(f'{stage} stage: {summary["source"]}; trained steps {summary["start_step"]} -> {summary["end_step"]}')
  if summary.get('preempted'):  # stop "Run all" here: the cells after this one need the finished stage
    raise KeyboardInterrupt(f'interrupted at step {summary["end_step"]}: checkpoint saved in {workdir}; run the '
                            'cell again to continue from it')
  if summary.get('eval'):
    print('held-out evaluation:', ', '.join(f'{k.split("/")[-1]} {v:.3f}' for k, v in summary['eval'].items()))
  print(f'checkpoints: {stage_dir / "checkpoints"}   params: {stage_dir / "params"}')
  return summary


def demo_model(workdir: os.PathLike, runtime: runtime_lib.Runtime, params: str = '') -> str:
  """`params` if given; else the demo model in WORKDIR/demo_model (trained now, both stages at the runtime's
  demo sizes, unless a previous session finished it). Returns a params directory."""
  if params:
    model_io.load_config(params)  # fails early, naming the directory, if it is not a params directory
    return str(params)
  path = pathlib.Path(workdir) / 'demo_model'
  final = path / 'enhancer' / 'params'
  if (final / 'config.json').is_file():
    print(f'using the demo model trained earlier: {final}')
    return str(final)
  print('training the demo model (tiny widths, 64²): images stay blurry, the point is the whole pipeline')
  config = demo_config(runtime, 'both')
  config.num_steps = runtime.sizes.demo_base_steps
  config.enhancer_num_steps = runtime.sizes.demo_enhancer_steps
  config.log.image_every_steps = config.log.eval_every_steps = config.log.checkpoint_every_steps = max(
      config.num_steps, config.enhancer_num_steps)
  train(config, path)
  return str(final)


def import_official(run_dir: str, epoch: str, enh_run_dir: str = '', enh_epoch: str = '',
                    out: os.PathLike = 'runs/official_params') -> str:
  """The original's run directories (args.txt + checkpoints/<epoch>_<net>.pth) as a params directory;
  an existing import in `out` is reused."""
  from bilayer_jax import import_original  # pylint: disable=g-import-not-at-top
  if (pathlib.Path(out) / 'config.json').is_file():
    source = model_io.load_config(out)[1].get('metadata', {}).get('imported_from', {})
    describe = lambda r, e, er, ee: f'{r} epoch {e}' + (f' + enhancer {er} epoch {ee}' if er else '')
    wanted = (str(run_dir), str(epoch), enh_run_dir or None, (enh_epoch or None) and str(enh_epoch))
    found = (source.get('run_dir'), source.get('epoch'), source.get('enh_run_dir') or None,
             source.get('enh_epoch') or None)
    if found != wanted:
      raise model_io.ParamsDirError(f'{out} holds weights imported from {describe(*found)}, not '
                                    f'{describe(*wanted)}: delete it or choose another output directory')
    print(f'using the weights imported earlier: {out}')
    return str(out)
  return str(import_original.import_run(run_dir, epoch, enh_run_dir or None, enh_epoch or None, out))


def animate(params: str, photo: str, driver: str, out: os.PathLike, runtime: runtime_lib.Runtime,
            enhance: Optional[bool] = None) -> Dict[str, Any]:
  """Drives the photo with the video into `out` ([source | driver | result] per frame); prints timings."""
  from bilayer_jax import drive  # pylint: disable=g-import-not-at-top
  summary = drive.drive(params, photo, driver, str(out), side_by_side=True, enhance=enhance,
                        max_frames=runtime.sizes.driver_frames)
  print(f'{summary["frames"]} frames ({summary["frames_without_face"]} without a face), enhancer '
        f'{"on" if summary["enhanced"] else "off"} -> {out}')
  for stage, seconds in summary['timings_s'].items():
    print(f'  {stage:32s} {seconds * 1000:9.1f} ms')
  return summary


def results_strip(params: str, photo: str, driver: str, runtime: runtime_lib.Runtime, frames: int = 5,
                  enhance: Optional[bool] = None) -> np.ndarray:
  """The README's picture for this photo and driver (`python -m bilayer_jax.strip`): the source crop, `frames`
  driver crops evenly spaced over the animated frames, and the renders."""
  from bilayer_jax import strip  # pylint: disable=g-import-not-at-top
  count = min(frames, runtime.sizes.driver_frames)
  return strip.make_strip(params, photo, driver, driver_end=runtime.sizes.driver_frames, frames=count,
                          enhance=enhance)


def evaluate(config: ml_collections.ConfigDict, workdir: os.PathLike, params: str,
             runtime: runtime_lib.Runtime, metrics: str = 'l1,psnr,ssim,lpips', finetune: bool = False
             ) -> Dict[str, Any]:
  """The evaluation protocol (self-reenactment on the held-out split, with the source-copy and mean-image
  baselines) on `params`; writes WORKDIR/eval/notebook[_finetuned]/{results.json,results.md,examples.png}.
  FSTH: K = 8 source frames per video, fine-tuned on them first (runtime.sizes.finetune_steps) if `finetune`."""
  from bilayer_jax import evaluate  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.params, config.eval.metrics = params, tuple(metrics.split(','))
  config.eval.name = 'notebook_finetuned' if finetune else 'notebook'
  config.eval.max_targets = runtime.sizes.eval_targets
  if config.family == 'fsth':
    config.eval.num_source_frames = 8
    config.eval.finetune_steps = runtime.sizes.finetune_steps if finetune else 0
  prepare_data(config)
  return evaluate.evaluate(config, str(workdir))


def latency_ms(fn: Callable[[np.ndarray], Any], poses: np.ndarray, runs: int) -> float:
  """Median wall time of `fn(poses)` over `runs` calls after one warm-up call, in ms."""
  fn(poses)
  times = []
  for _ in range(max(runs, 1)):
    start = time.perf_counter()
    fn(poses)
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


@dataclasses.dataclass
class ExportReport:
  rows: List[Dict[str, Any]]  # one per runtime: model, file, size, latency, error and PSNR vs JAX
  samples: Dict[str, np.ndarray]  # runtime -> image of the first check pose, in [0, 1]
  files: List[str]


def load_avatar(params: str, photo: str):
  """(animator, avatar) of the photo with the model in `params` (texture enhancer on if it has one)."""
  anim, _, avatar = export_cli.load_avatar(params, photo)
  return anim, avatar


def avatar_images(anim, avatar):
  """(images, titles): what initialisation saw and made — crop, mask, keypoints, texture, a rendered frame."""
  source = avatar.source
  rendered = anim.render(avatar, source.poses.reshape(1, -1))
  images = [source.crop, source.segs[0, 0], _unit_range(source.stickmen[0, 0]), _unit_range(avatar.texture[0]),
            _unit_range(rendered['image'][0])]
  titles = ['source crop', 'person mask', 'keypoints', 'texture' + (' (enhanced)' if avatar.enhanced else ''),
            'rendered in the source pose']
  return images, titles


def export_avatar(anim, avatar, out_dir: os.PathLike, runtime: runtime_lib.Runtime,
                  variants: Sequence[str] = ('tflite_fp32', 'tflite_int8', 'torch'), driver: Optional[str] = None
                  ) -> ExportReport:
  """Folds the avatar, exports each variant and checks it against JAX.

  Every runtime renders the same driver poses (from `driver`, default: the in-package clip); the report has
  max |error| and PSNR against the folded JAX network, file sizes and per-frame latency (batch 1).
  """
  unknown = set(variants) - set(EXPORT_VARIANTS)
  if unknown:
    raise ValueError(f'export variants {sorted(unknown)}: expected names from {sorted(EXPORT_VARIANTS)}')
  net = anim.fold(avatar)
  poses = export_cli.driver_poses(anim, driver, max_frames=runtime.sizes.calibration_frames)
  check = export_cli.check_poses(poses)
  jax_fn = jax.jit(functools.partial(folding.frame_forward, net.spec))
  run_jax = lambda p: np.asarray(jax_fn(net.arrays, p)['image'])
  # The exports compute in float32: compare with float32 matmuls/convs (TPUs and TF32 GPUs default to less).
  with jax.default_matmul_precision('float32'):
    reference = run_jax(check)
  device = jax.devices()[0].platform.upper()
  runs = runtime.sizes.latency_runs
  rows = [{'runtime': f'JAX folded, jit ({device})', 'file': '-', 'MB': math.nan,
           'latency ms': latency_ms(run_jax, check[:1], runs), 'max |err|': 0.0, 'PSNR dB': math.inf}]
  samples = {rows[0]['runtime']: reference[0]}
  files = []
  out_dir = pathlib.Path(out_dir)
  for name in tqdm.auto.tqdm(variants, desc='export', unit='model'):
    fmt, quantize = EXPORT_VARIANTS[name]
    if fmt == 'tflite':
      precision = 'fp32' if quantize == 'none' else quantize
      path = tflite_export.export_frame_model(net, out_dir / f'avatar_{precision}.tflite', quantize,
                                              representative_poses=poses)
      run, label = export_cli.run_tflite(path), f'TFLite {precision} (LiteRT, CPU)'
      files += [str(path), str(path.with_suffix('.json'))]
    else:
      path = export_cli.write_torchscript(net, out_dir / 'avatar.pt')
      run, label = export_cli.run_torchscript(path), 'PyTorch TorchScript (CPU)'
      files.append(str(path))
    images = run(check)
    rows.append({'runtime': label, 'file': path.name, 'MB': path.stat().st_size / 1e6,
                 'latency ms': latency_ms(run, check[:1], runs), **_check_columns(images, reference)})
    samples[label] = images[0]
  return ExportReport(rows, {k: _unit_range(v) for k, v in samples.items()}, files)


def _check_columns(images: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
  check = export_cli.compare(images, reference)
  return {'max |err|': check['max_abs_error'], 'PSNR dB': check['psnr_db']}
