r"""Evaluate a checkpoint or imported weights with the evaluation protocol (`config.eval`).

    python -m bilayer_jax.evaluate --config configs/demo.py --workdir runs/demo [--config.eval.params=DIR]

(the same as `python run.py --config ... --workdir DIR --mode=eval`, which also runs it on several hosts).

The glue between a training config and the evaluation library (`bilayer_jax.evaluators`): it sits with
the entry points because it reads the trainer's checkpoints, so the library needs nothing from `train/`.

What is evaluated (first match):
  1. `eval.params`: a bilayer_jax params directory (a run's params/, what `python -m
     bilayer_jax.import_original` writes), or one of the ORIGINAL's run directories (args.txt +
     checkpoints/<epoch>_<net>.pth; set `eval.original_epoch`, and optionally
     `eval.original_enh_run_dir`/`eval.original_enh_epoch` for its texture enhancer);
  2. `eval.checkpoint_step` > 0: WORKDIR's checkpoint of that step (learning curves, `bench/convergence.py`);
  3. WORKDIR's latest orbax checkpoint or WORKDIR/params, whichever is newer (stage 'both': WORKDIR/enhancer
     before WORKDIR/base).
Writes WORKDIR/eval/<name>/results.json, results.md and examples.png (source | target | prediction rows),
each written to a temporary name and renamed (only process 0 writes).
"""

import json
import os
import pathlib
import tempfile
from typing import Any, Dict, Optional, Tuple

from absl import flags
from absl import logging
import jax
import numpy as np
from ml_collections import config_flags
import orbax.checkpoint as ocp
from PIL import Image

from bilayer_jax import cli
from bilayer_jax import config as config_lib
from bilayer_jax import errors
from bilayer_jax import families
from bilayer_jax import finetune
from bilayer_jax import model_io
from bilayer_jax import xla_cpu
from bilayer_jax.evaluators import metrics as metrics_lib
from bilayer_jax.evaluators import protocol
from bilayer_jax.evaluators import report
from bilayer_jax.train import checkpoints
from bilayer_jax.train import config_checks


def _stage_dirs(config, workdir: str):
  if config.stage == 'both':
    return [os.path.join(workdir, 'enhancer'), os.path.join(workdir, 'base')]
  return [workdir]


def _latest_step(stage_dir: str) -> Optional[int]:
  """The newest complete checkpoint step in STAGE_DIR/checkpoints, or None."""
  if not (pathlib.Path(stage_dir) / 'checkpoints').is_dir():
    return None
  manager = checkpoints.make_manager(stage_dir, keep=1_000_000)  # never deletes: only reads
  try:
    return manager.latest_step()
  finally:
    manager.close()


def _from_checkpoint(family, config, stage_dir: str, step: int):
  """The generator of checkpoint `step` (full training state, restored as saved) as the family's animator."""
  manager = checkpoints.make_manager(stage_dir, keep=1_000_000)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                             meta=ocp.args.JsonRestore()))
  finally:
    manager.close()
  stage = restored['meta'].get('stage', 'base')
  variables = jax.device_get(family.training.model_variables(restored['state'])['generator'])
  return family.animator(family.training.step_config(config, stage).model, variables)


def load_animator(config, workdir: str) -> Tuple[Any, str]:
  """The model to evaluate (see module docstring) as the family's animator, and where it came from.

  In a workdir, the newest of the latest checkpoint and params/ wins; params/ (written at the end of a
  stage, from the same state as its last checkpoint) is preferred at equal steps: it loads without the
  optimiser state and on any number of hosts.
  """
  family, ev = families.get(config.family), config.eval
  if ev.params:
    if (pathlib.Path(ev.params) / 'args.txt').is_file():
      if not ev.original_epoch:
        raise errors.InvalidArgumentError(
            f'eval.params={ev.params} is an original run directory: set eval.original_epoch')
      cfg, variables, _ = family.converters['original'].import_run(
          ev.params, ev.original_epoch, ev.original_enh_run_dir or None, ev.original_enh_epoch or None)
      return family.animator(cfg, variables['generator']), f'original run {ev.params} epoch {ev.original_epoch}'
    return families.animator_from_params(ev.params), f'params {ev.params}'
  if ev.checkpoint_step:
    return _checkpoint_of_step(family, config, workdir, ev.checkpoint_step)
  for stage_dir in _stage_dirs(config, workdir):
    step = _latest_step(stage_dir)
    params_dir = pathlib.Path(stage_dir) / 'params'
    params_step = model_io.load_config(params_dir)[1]['metadata'].get('step', -1) if params_dir.is_dir() else None
    if params_step is not None and (step is None or params_step >= step):
      return families.animator_from_params(str(params_dir)), f'{params_dir} (step {params_step})'
    if step is not None:
      return _from_checkpoint(family, config, stage_dir, step), f'{stage_dir} checkpoint step {step}'
  raise model_io.ParamsDirError(f'nothing to evaluate: {workdir} has no checkpoint or params, and eval.params is '
                                'not set')


def _checkpoint_of_step(family, config, workdir: str, step: int) -> Tuple[Any, str]:
  """The animator of WORKDIR's checkpoint `step` (the first stage folder that has it)."""
  available = []
  for stage_dir in _stage_dirs(config, workdir):
    if (pathlib.Path(stage_dir) / 'checkpoints').is_dir():
      manager = checkpoints.make_manager(stage_dir, keep=1_000_000)
      try:
        steps = list(manager.all_steps())
      finally:
        manager.close()
      if step in steps:
        return _from_checkpoint(family, config, stage_dir, step), f'{stage_dir} checkpoint step {step}'
      available += steps
  raise model_io.ParamsDirError(f'eval.checkpoint_step={step}: no such checkpoint in {workdir} (it has steps '
                                f'{sorted(available)})')


def settings_from(config) -> protocol.Settings:
  ev = config.eval
  enhance = {'auto': None, 'true': True, 'false': False}.get(str(ev.enhance).lower())
  if str(ev.enhance).lower() not in ('auto', 'true', 'false'):
    raise errors.InvalidArgumentError(f'eval.enhance={ev.enhance!r}: expected auto, true or false')
  if ev.pose_identity not in ('', 'dlib', 'arcface'):
    raise errors.InvalidArgumentError(f'eval.pose_identity={ev.pose_identity!r}: expected dlib, arcface or empty '
                                      '(off)')
  if ev.pose_identity == 'arcface' and 'csim_arcface' not in ev.metrics:
    raise errors.InvalidArgumentError('eval.pose_identity=arcface reuses the csim_arcface metric\'s network: add '
                                      'csim_arcface to eval.metrics (and set eval.arcface_weights)')
  if ev.mask not in metrics_lib.MASK_MODES:
    raise errors.InvalidArgumentError(f'eval.mask={ev.mask!r}: expected one of {metrics_lib.MASK_MODES}')
  return protocol.Settings(source_frame=ev.source_frame, max_targets=ev.max_targets, max_videos=ev.max_videos,
                           cross_identity=ev.cross_identity, mask=ev.mask, enhance=enhance,
                           grid_rows=ev.grid_rows, num_source_frames=ev.num_source_frames,
                           pose_identity=ev.pose_identity)


def _finetuning(config, workdir: str, tmp_dir: str):
  """The protocol's `adapt` for eval.finetune_steps > 0: each video's animator fine-tuned on its source
  frames (bilayer_jax.finetune) from the evaluated params directory."""
  params_dir = config.eval.params or os.path.join(workdir, 'params')
  if not (pathlib.Path(params_dir) / 'config.json').is_file():
    raise model_io.ParamsDirError(f'eval.finetune_steps={config.eval.finetune_steps} fine-tunes a params '
                                  f'directory: {params_dir} is none (set eval.params)')
  settings = finetune.Settings(steps=config.eval.finetune_steps, train_adaptive=config.eval.finetune_train_adaptive,
                               perceptual_weights_dir=config.loss.perceptual_weights_dir, progress=False)

  def adapt(sources, index):
    summary = finetune.finetune(params_dir, sources, os.path.join(tmp_dir, f'video{index}'), settings)
    return families.animator_from_params(summary['params'])

  return adapt


def _atomic_write(path: pathlib.Path, write) -> None:
  tmp = path.with_name(path.name + '.tmp')
  write(tmp)
  os.replace(tmp, path)


def evaluate(config, workdir: str, progress: bool = True) -> Dict[str, Any]:
  """Runs the protocol on config.data.eval_split and writes the report; returns the results.

  `config`: a RunConfig or the ConfigDict of a config file (converted here, once).
  """
  config = config_lib.from_config_dict(config)
  config_checks.check_demo_prepared(config)
  names = metrics_lib.parse_metrics(config.eval.metrics)
  settings = settings_from(config)
  evaluator = metrics_lib.FrameEvaluator(names, arcface_weights=config.eval.arcface_weights)
  animator, description = load_animator(config, workdir)
  data_dir = os.path.expanduser(config.data.data_dir or os.path.join('~', 'tensorflow_datasets'))
  logging.info('evaluating %s on %s/%s', description, config.data.name, config.data.eval_split)
  with tempfile.TemporaryDirectory() as tmp_dir:
    adapt = _finetuning(config, workdir, tmp_dir) if config.eval.finetune_steps else None
    results = protocol.evaluate(animator, evaluator, data_dir, config.data.eval_split, config.data.name,
                                settings, progress=progress, adapt=adapt)
  results['model'] = {'evaluated': description, 'enhanced': bool(
      animator.has_enhancer if settings.enhance is None else settings.enhance)}
  if config.eval.finetune_steps:
    results['model']['finetune_steps'] = config.eval.finetune_steps
  grid = results.pop('grid')
  name = config.eval.name or report.folder_name(description)
  out_dir = pathlib.Path(workdir) / 'eval' / name
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / 'results.json',
                  lambda p: p.write_text(json.dumps(report.jsonable(results), indent=1, allow_nan=True)))
    _atomic_write(out_dir / 'results.md', lambda p: p.write_text(report.markdown(results)))
    if grid is not None:
      pixels = np.round((np.clip(grid, -1, 1) + 1) * 127.5).astype(np.uint8)
      _atomic_write(out_dir / 'examples.png', lambda p: Image.fromarray(pixels).save(p, format='PNG'))
    logging.info('wrote %s', out_dir)
  results['output_dir'] = str(out_dir)
  return results


def _define_flags():
  """Defines the command-line flags (only when run as a program, so importing the module is side-effect free)."""
  config_flags.DEFINE_config_file('config', None, 'Training configuration file of the run to evaluate.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'The run directory (its checkpoints or params are evaluated unless '
                      'config.eval.params names others); the report goes to WORKDIR/eval/<name>/.')


def main(argv):
  del argv
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  config = cli.loaded_config()
  config_checks.check(config)
  from data_prep import demo  # pylint: disable=g-import-not-at-top  (entry point: builds the demo dataset)
  demo.prepare(config)
  results = evaluate(config, flags.FLAGS.workdir)
  print(f'self-reenactment: {results["self_reenactment"]["summary"]}')
  print(f'wrote {results["output_dir"]}')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
