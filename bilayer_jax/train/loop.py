"""The training loop: `train_and_evaluate(config, workdir)` for one stage or both in sequence.

Per stage: mesh over all devices (data parallel; FSDP by config), per-host input pipeline turned into
global batches, one jit-compiled train step with state donation, orbax checkpoints (resume order in
`checkpoints.py`, SIGTERM -> save and exit), clu TensorBoard writers (losses, grad/param norms, learning
rates, images/s, step time, image grids, a parameter overview), standing BN statistics before evaluation
and checkpoints, held-out evaluation, a NaN/Inf guard, and a params directory (`WORKDIR/params`) at the end.

Data order is a function of (seed, step): the input iterator is (re)created with the step folded into the
seed at the start and at every checkpoint step, so a run resumed from a periodic checkpoint sees exactly the
batches an uninterrupted run sees.
"""

import dataclasses
import functools
import os
import pathlib
import time
from typing import Any, Dict, Iterator

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions
import jax
import numpy as np
import orbax.checkpoint as ocp
import tqdm.auto

from bilayer_jax import config as config_lib
from bilayer_jax import families
from bilayer_jax import model_io
from bilayer_jax.data import input_pipeline
from bilayer_jax.train import checkpoints
from bilayer_jax.train import config_checks
from bilayer_jax.train import sharding
from bilayer_jax.train import stage_setup


# Shown next to the progress bar (config.log.progress_bar).
_BAR_METRICS = ('loss/total', 'loss/G_L1')


class NonFiniteError(FloatingPointError):
  """A loss, gradient or parameter became NaN/Inf: the run stops without writing a checkpoint."""


def train_and_evaluate(config: Any, workdir: str) -> Dict[str, Any]:
  """Trains `config.stage` ('base', 'enhancer', or 'both': base into WORKDIR/base, then the enhancer
  into WORKDIR/enhancer initialised from the base stage's params). Returns the last stage's summary.

  The config is checked before anything is written (`config_checks.ConfigError`). SIGTERM/SIGINT at any
  point saves the current stage's state and ends the whole run: the summary has `preempted=True` and no
  later stage starts; the same call again resumes that stage and continues. `config`: a RunConfig or the
  ConfigDict of a config file (converted here, once).
  """
  config = config_lib.from_config_dict(config)
  config_checks.check(config)
  config_checks.check_demo_prepared(config)
  if config.train.matmul_precision != 'default':
    jax.config.update('jax_default_matmul_precision', config.train.matmul_precision)
  guard = checkpoints.PreemptionGuard()
  try:
    if config.stage != 'both':
      return run_stage(config, workdir, config.stage, config.num_steps, guard)
    base_dir = os.path.join(workdir, 'base')
    if _finished(base_dir, config.num_steps):
      logging.info('base stage already finished (%s/params, step %d)', base_dir, config.num_steps)
    else:
      summary = run_stage(config, base_dir, 'base', config.num_steps, guard)
      if summary.get('preempted'):
        return summary
    enh_config = dataclasses.replace(config, init_from=os.path.join(base_dir, 'params'),
                                     standing_stats=dataclasses.replace(config.standing_stats, enabled=False))
    return run_stage(enh_config, os.path.join(workdir, 'enhancer'), 'enhancer', config.enhancer_num_steps, guard)
  finally:
    guard.close()


def _finished(stage_dir: str, num_steps: int) -> bool:
  """Whether a stage directory holds the params written at the end of a `num_steps`-step stage."""
  try:
    _, info = model_io.load_config(os.path.join(stage_dir, 'params'))
  except model_io.ParamsDirError:
    return False
  return info.get('metadata', {}).get('step') == num_steps


def _due(step: int, every: int) -> bool:
  """Whether a periodic action with period `every` (0 = never) runs at `step`."""
  return every > 0 and step % every == 0


def _data_seed(seed: int, step: int, purpose: int = 0) -> int:
  return int(np.random.SeedSequence([seed, step, purpose]).generate_state(1)[0] >> 1)


def _dataset(config, split: str, seed: int, shuffle: bool = True):
  training = families.get(config.family).training
  return input_pipeline.create_dataset(
      config.data.data_dir or None, split, image_size=config.model.image_size,
      num_source_frames=config.data.num_source_frames, num_target_frames=config.data.num_target_frames,
      batch_size=config.batch_size // jax.process_count(),
      seed=seed, shuffle=shuffle, repeat=True, dataset_name=config.data.name,
      shuffle_buffer=config.data.shuffle_buffer, landmark_style=training.landmark_style,
      with_video_index=training.with_video_index,
      example_transform=training.example_transform(config, split == config.data.train_split))


def _batches(dataset, batch_sharding) -> Iterator[Dict[str, jax.Array]]:
  for local in dataset.as_numpy_iterator():
    yield input_pipeline.make_global_batch(local, batch_sharding)


def _check_finite(metrics: Dict[str, Any], step: int) -> None:
  bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
  if bad:
    raise NonFiniteError(f'step {step}: non-finite values in {bad}; stopping without writing a checkpoint '
                         '(the last checkpoint stays valid). Lower the learning rates or use float32.')


def _barrier(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process gets here (the coordination service's barrier, not a device collective)."""
  if jax.process_count() > 1:
    ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def _write_params(ctx: '_Stage', state) -> None:
  """WORKDIR/params: the model variables as a params directory (replaced atomically), written by process 0.

  Every process must call this: gathering (FSDP-)sharded variables onto each host is a collective.
  """
  gathered = jax.jit(ctx.training.model_variables, out_shardings=ctx.repl)(state)
  variables = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), gathered)
  if jax.process_index() == 0:
    # The dataset's crop rule travels with the params: inference must crop photos and drivers the same way.
    crop_style = input_pipeline.dataset_crop_style(ctx.config.data.data_dir, ctx.config.data.name)
    metadata = {'trained_by': 'bilayer_jax', 'stage': ctx.cfg.stage, 'step': int(state['step']),
                'config': config_lib.to_json(ctx.config), 'crop_style': crop_style}
    model_io.replace_params(pathlib.Path(ctx.workdir) / 'params', ctx.cfg.model, variables, metadata)


@dataclasses.dataclass
class _Stage:
  """What one stage's loop runs with (built by `_prepare`)."""
  config: config_lib.RunConfig
  training: families.base.Training
  cfg: Any  # the family's static step configuration
  workdir: str
  batch_sh: Any
  repl: Any
  state_sh: Any
  writer: Any
  frozen: Dict[str, Any]  # the frozen networks the losses use (e.g. perceptual nets)
  manager: Any
  fns: stage_setup.StageFunctions


def _restore_or_init(training, config, cfg, manager, mesh, repl):
  """(state, where it came from, its shardings): checkpoint, other run, init_from or fresh (checkpoints.py)."""
  shapes, abstract_state, state_sh = stage_setup.state_layout(training, config, cfg, mesh)

  def init():
    # Fresh variables are made on the host (every host the same, from the seed) and placed in their shards.
    variables = jax.device_put(training.init_variables(cfg, config.seed, shapes), repl)
    return jax.jit(functools.partial(training.init_state, cfg), out_shardings=state_sh)(variables)

  def merge(state, variables):
    return jax.device_put(training.merge_init(cfg, state, variables, config.init_from), state_sh)

  state, source = checkpoints.restore_or_init(manager, config, abstract_state, state_sh, init, merge)
  return state, source, abstract_state, state_sh


def _prepare(config: config_lib.RunConfig, workdir: str, stage: str):
  """(_Stage, state, source): mesh, writer, frozen nets, the restored state and the compiled functions."""
  training = families.get(config.family).training
  cfg = training.step_config(config, stage)
  logging.info('process %d/%d, %d local / %d global devices (%s); stage %s trains %s',
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform, stage, ', '.join(cfg.networks_to_train))
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0, asynchronous=True)
  frozen = jax.device_put(training.frozen_params(config, cfg), repl)
  manager = checkpoints.make_manager(workdir, config.log.keep_checkpoints)
  state, source, abstract_state, state_sh = _restore_or_init(training, config, cfg, manager, mesh, repl)
  fns = stage_setup.compile_functions(training, config, cfg, abstract_state, state_sh, batch_sh, repl, frozen)
  _barrier(f'bilayer_jax/compiled/{stage}/{int(state["step"])}')
  stage_ctx = _Stage(config, training, cfg, workdir, batch_sh, repl, state_sh, writer, frozen, manager, fns)
  return stage_ctx, state, source


def _log_start(ctx: _Stage, state, start: int) -> None:
  """Hyperparameters and a parameter overview at step 0; the compile time always."""
  if start == 0:
    if jax.process_index() == 0:
      ctx.writer.write_hparams({k: str(v) for k, v in config_lib.as_dict(ctx.config).items()
                                 if not isinstance(v, dict)})
    # 'global': statistics of sharded arrays by collectives, so every process takes part (process 0 logs).
    overview = dict(state['params']['generator'], discriminator=state['params']['discriminator'])
    for net, tree in overview.items():
      parameter_overview.log_parameter_overview(tree, include_stats='global', msg=f'{net} parameters',
                                                jax_logging_process=0)
  ctx.writer.write_scalars(start, {'perf/compile_time_s': ctx.fns.seconds})


def _train_batches(ctx: _Stage, step: int) -> Iterator[Dict[str, jax.Array]]:
  """Training batches from `step` on (the data order is a function of seed and step)."""
  return _batches(_dataset(ctx.config, ctx.config.data.train_split, _data_seed(ctx.config.seed, step)),
                  ctx.batch_sh)


def _with_standing_stats(ctx: _Stage, state, step: int):
  """The state with BN statistics averaged over `standing_stats.num_batches` batches (if on)."""
  if not ctx.fns.stats:  # off, or no network of this stage has BN in train mode
    return state
  config = ctx.config
  batches = _batches(_dataset(config, config.data.train_split, _data_seed(config.seed, step, 1)), ctx.batch_sh)
  count = config.standing_stats.num_batches
  new = ctx.training.standing_statistics(ctx.fns.stats, state, (next(batches) for _ in range(count)),
                                       ctx.fns.stats_networks)
  return jax.device_put(new, ctx.state_sh)


def _evaluate(ctx: _Stage, state, step: int) -> Dict[str, float]:
  """The periodic held-out evaluation: metrics and a sample grid to TensorBoard; returns the metrics."""
  config = ctx.config
  batches = _batches(_dataset(config, config.data.eval_split, config.seed, shuffle=False), ctx.batch_sh)
  gen_vars = ctx.training.model_variables(state)['generator']
  values, images = {}, None
  for _ in range(config.log.eval_batches):
    metrics, columns = ctx.fns.evaluate(gen_vars, next(batches), ctx.fns.lpips_vars)
    for k, v in jax.device_get(metrics).items():
      values.setdefault(k, []).append(np.asarray(v))
    images = images if images is not None else columns
  summary = {f'eval/{k}': float(np.concatenate(v).mean()) for k, v in values.items()}
  ctx.writer.write_scalars(step, summary)
  ctx.writer.write_images(step, {'eval/samples': ctx.training.image_grid(images, config.log.num_images)[None]})
  logging.info('eval at step %d: %s', step, summary)
  return summary


class _Rate:
  """Step time and images/s between two logged steps."""

  def __init__(self, config, step: int):
    self.images_per_step = config.batch_size * config.data.num_target_frames
    self.time, self.step = time.time(), step

  def since_last(self, step: int) -> Dict[str, float]:
    elapsed, steps = time.time() - self.time, step - self.step
    self.time, self.step = time.time(), step
    return {'perf/step_time_s': elapsed / max(steps, 1),
            'perf/images_per_s': self.images_per_step * steps / max(elapsed, 1e-9)}


def _log_step(ctx: _Stage, step: int, num_steps: int, metrics, batch, state, rate: _Rate, bar) -> None:
  """Scalars every `log.every_steps`, a training sample grid every `log.image_every_steps`."""
  log = ctx.config.log
  if _due(step, log.every_steps) or step == num_steps:
    ctx.writer.write_scalars(step, {**{k: float(v) for k, v in metrics.items()}, **rate.since_last(step)})
    bar.set_postfix({k.split('/')[-1]: f'{float(metrics[k]):.3g}' for k in _BAR_METRICS if k in metrics})
  if _due(step, log.image_every_steps):
    _, columns = ctx.fns.evaluate(ctx.training.model_variables(state)['generator'], batch, ctx.fns.lpips_vars)
    ctx.writer.write_images(step, {'train/samples': ctx.training.image_grid(columns, log.num_images)[None]})


def _eval_and_checkpoint(ctx: _Stage, state, step: int, num_steps: int, preempted: bool, summary):
  """Standing statistics, evaluation and checkpoint when due; returns (state, whether a checkpoint was saved)."""
  log = ctx.config.log
  eval_now = _due(step, log.eval_every_steps) or step == num_steps
  save_now = _due(step, log.checkpoint_every_steps) or step == num_steps or preempted
  if eval_now or save_now:
    state = _with_standing_stats(ctx, state, step)
  if eval_now and not preempted:
    summary['eval'] = _evaluate(ctx, state, step)
  if save_now:
    _check_finite({'params': np.asarray(ctx.fns.abs_sum(state['params']))}, step)
    checkpoints.save(ctx.manager, step, state, {'step': step, 'stage': ctx.cfg.stage, 'seed': ctx.config.seed},
                     force=True)
  return state, save_now


def _train(ctx: _Stage, state, start: int, num_steps: int, guard, summary):
  """The step loop from `start` to `num_steps` (or preemption); returns (state, last step)."""
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=ctx.writer)
  bar = tqdm.auto.tqdm(total=num_steps, initial=start, desc=f'{ctx.cfg.stage} stage', unit='step',
                       disable=not ctx.config.log.progress_bar or jax.process_index() > 0)
  train_iter, rate, step = _train_batches(ctx, start), _Rate(ctx.config, start), start
  try:
    with metric_writers.ensure_flushes(ctx.writer):
      while step < num_steps:
        batch = next(train_iter)
        state, metrics = ctx.fns.train_step(state, batch, ctx.frozen)
        step += 1
        metrics = jax.device_get(metrics)
        _check_finite(metrics, step)
        summary['metrics'][step] = {k: float(v) for k, v in metrics.items()}
        report(step)
        bar.update(1)
        _log_step(ctx, step, num_steps, metrics, batch, state, rate, bar)
        preempted = guard.should_stop(ctx.manager, step)
        state, saved = _eval_and_checkpoint(ctx, state, step, num_steps, preempted, summary)
        if saved:  # re-seed the data at every checkpoint: a resumed run then sees the same batches
          train_iter = _train_batches(ctx, step)
        if preempted:
          logging.warning('preempted at step %d: checkpoint written, exiting', step)
          summary['preempted'] = True
          break
      ctx.manager.wait_until_finished()
  finally:
    bar.close()
  return state, step


def run_stage(config: config_lib.RunConfig, workdir: str, stage: str, num_steps: int,
              guard: checkpoints.PreemptionGuard) -> Dict[str, Any]:
  """Trains one stage to `num_steps` (resuming if WORKDIR holds checkpoints). Returns a summary."""
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  ctx, state, source = _prepare(config, workdir, stage)
  start = int(state['step'])
  logging.info('%s; starting at step %d of %d', source, start, num_steps)
  _log_start(ctx, state, start)
  summary: Dict[str, Any] = {'stage': stage, 'start_step': start, 'source': source, 'metrics': {}}
  try:
    state, summary['end_step'] = _train(ctx, state, start, num_steps, guard, summary)
  finally:
    ctx.manager.close()
  if summary['end_step'] >= num_steps:
    _write_params(ctx, state)
  return summary
