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

import functools
import os
import pathlib
import shutil
import time
from typing import Any, Dict, Iterator

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm.auto

from bilayer_jax import model_io
from bilayer_jax.data import demo
from bilayer_jax.data import input_pipeline
from bilayer_jax.evaluators import lpips as lpips_lib
from bilayer_jax.evaluators import metrics as metrics_lib
from bilayer_jax.train import checkpoints
from bilayer_jax.train import config_checks
from bilayer_jax.train import evaluation
from bilayer_jax.train import setup
from bilayer_jax.train import sharding
from bilayer_jax.train import step as step_lib


# Shown next to the progress bar (config.log.progress_bar).
_BAR_METRICS = ('loss/total', 'loss/G_L1')


class NonFiniteError(FloatingPointError):
  """A loss, gradient or parameter became NaN/Inf: the run stops without writing a checkpoint."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains `config.stage` ('base', 'enhancer', or 'both': base into WORKDIR/base, then the enhancer
  into WORKDIR/enhancer initialised from the base stage's params). Returns the last stage's summary.

  The config is checked before anything is written (`config_checks.ConfigError`). SIGTERM/SIGINT at any
  point saves the current stage's state and ends the whole run: the summary has `preempted=True` and no
  later stage starts; the same call again resumes that stage and continues.
  """
  config_checks.check(config)
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
    enh_config = ml_collections.ConfigDict(config.to_dict())
    enh_config.init_from = os.path.join(base_dir, 'params')
    enh_config.standing_stats.enabled = False
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
  data_dir = config.data.data_dir or None
  if config.data.demo:
    data_dir = demo.ensure_demo_dataset(data_dir)
  return input_pipeline.create_dataset(
      data_dir, split, image_size=config.model.image_size, num_source_frames=config.data.num_source_frames,
      num_target_frames=config.data.num_target_frames, batch_size=config.batch_size // jax.process_count(),
      seed=seed, shuffle=shuffle, repeat=True, dataset_name=config.data.name,
      shuffle_buffer=config.data.shuffle_buffer)


def _batches(dataset, batch_sharding) -> Iterator[Dict[str, jax.Array]]:
  for local in dataset.as_numpy_iterator():
    yield input_pipeline.make_global_batch(local, batch_sharding)


def _check_finite(metrics: Dict[str, Any], step: int) -> None:
  bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
  if bad:
    raise NonFiniteError(f'step {step}: non-finite values in {bad}; stopping without writing a checkpoint '
                         '(the last checkpoint stays valid). Lower the learning rates or use float32.')


def _merge_init_params(cfg: step_lib.StepConfig, state, variables: Dict[str, Any], source: str = 'init_from'):
  """Copies the networks present in imported variables into a fresh state (params and statistics)."""
  params, model_state = dict(state['params']), {k: dict(v) for k, v in state['model_state'].items()}
  gen_params = dict(params['generator'])
  for collection, tree in variables.get('generator', {}).items():
    for net, value in tree.items():
      if net not in gen_params:
        continue
      current = gen_params[net] if collection == 'params' else state['model_state']['generator'].get(
          collection, {}).get(net)
      if current is not None:
        model_io.check_shapes(current, value, f'{source}: generator/{collection}/{net}')
      if collection == 'params':
        gen_params[net] = value
      else:
        model_state['generator'].setdefault(collection, {})
        model_state['generator'][collection] = {**model_state['generator'][collection], net: value}
  params['generator'] = gen_params
  if 'discriminator' in variables:
    model_io.check_shapes(params['discriminator'], variables['discriminator']['params'],
                          f'{source}: discriminator/params')
    params['discriminator'] = variables['discriminator']['params']
    model_state['discriminator'] = {k: v for k, v in variables['discriminator'].items() if k != 'params'}
  merged = {**state, 'params': params, 'model_state': model_state}
  # Optimiser states start fresh for the (new) parameters.
  return step_lib.init_state(cfg, step_lib.model_variables(merged)) | {'step': state['step']}


def _barrier(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process gets here (the coordination service's barrier, not a device collective)."""
  if jax.process_count() > 1:
    ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def _write_params(workdir: str, cfg: step_lib.StepConfig, state, config, replicated) -> None:
  """WORKDIR/params: the model variables as a params directory (replaced atomically), written by process 0.

  Every process must call this: gathering (FSDP-)sharded variables onto each host is a collective.
  """
  gathered = jax.jit(step_lib.model_variables, out_shardings=replicated)(state)
  variables = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), gathered)
  if jax.process_index() != 0:
    return
  final = pathlib.Path(workdir) / 'params'
  staging = pathlib.Path(workdir) / 'params.new'
  if staging.exists():
    shutil.rmtree(staging)
  model_io.save_params(staging, cfg.model, variables, {'trained_by': 'bilayer_jax', 'stage': cfg.stage,
                                                       'step': int(state['step']), 'config': config.to_json()})
  if final.exists():
    old = pathlib.Path(workdir) / 'params.old'
    os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old)
  else:
    os.replace(staging, final)


def dummy_batch(config: ml_collections.ConfigDict) -> Dict[str, jax.Array]:
  """Zeros shaped like one global training batch (for shapes and compilation)."""
  s, b = config.model.image_size, config.batch_size
  n, t = config.data.num_source_frames, config.data.num_target_frames
  frames = lambda f, c: jnp.zeros((b, f, s, s, c))
  poses = lambda f: jnp.zeros((b, f, config.model.pse_in_channels))
  return {'source_imgs': frames(n, 3), 'source_segs': frames(n, 1), 'source_stickmen': frames(n, 3),
          'source_poses': poses(n), 'target_imgs': frames(t, 3), 'target_segs': frames(t, 1),
          'target_stickmen': frames(t, 3), 'target_poses': poses(t)}


def state_layout(config: ml_collections.ConfigDict, cfg: step_lib.StepConfig, mesh):
  """(variable shapes, abstract training state, its shardings) of one stage, without computing anything."""
  shapes = step_lib.variable_shapes(cfg, dummy_batch(config))
  abstract_state = jax.eval_shape(functools.partial(step_lib.init_state, cfg), shapes)
  state_sh = sharding.state_shardings(abstract_state, mesh, config.mesh.fsdp, config.mesh.fsdp_min_size)
  return shapes, abstract_state, state_sh


def run_stage(config: ml_collections.ConfigDict, workdir: str, stage: str, num_steps: int,
              guard: checkpoints.PreemptionGuard) -> Dict[str, Any]:
  """Trains one stage to `num_steps` (resuming if WORKDIR holds checkpoints). Returns a summary."""
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  cfg = setup.step_config(config, stage)
  logging.info('process %d/%d, %d local / %d global devices (%s); stage %s trains %s',
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform, stage, ', '.join(cfg.networks_to_train))
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0, asynchronous=True)
  perceptual = jax.device_put(setup.perceptual_params(config, cfg), repl)

  # --- state: shapes, shardings, init / restore --------------------------------------------------
  dummy = dummy_batch(config)
  shapes, abstract_state, state_sh = state_layout(config, cfg, mesh)
  # Fresh variables are made on the host (every host the same, from the seed) and placed in their shards.
  init_jit = lambda: jax.jit(lambda v: step_lib.init_state(cfg, v), out_shardings=state_sh)(
      jax.device_put(step_lib.init_variables(cfg, config.seed, shapes), sharding.replicated(mesh)))
  manager = checkpoints.make_manager(workdir, config.log.keep_checkpoints)
  merge = lambda st, variables: jax.device_put(_merge_init_params(cfg, st, variables, config.init_from), state_sh)
  state, source = checkpoints.restore_or_init(manager, config, abstract_state, state_sh, init_jit, merge)
  start = int(state['step'])
  logging.info('%s; starting at step %d of %d', source, start, num_steps)

  # --- compiled functions: all compiled up front, then the hosts synchronise --------------------------
  # (with several processes, a host reaching its first collective long before the others times out)
  abs_state = checkpoints.with_shardings(abstract_state, state_sh)
  abs_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh) for k, v in dummy.items()}
  abs_gen = step_lib.model_variables(abs_state)['generator']
  compile_start = time.time()
  step_fn = jax.jit(functools.partial(step_lib.train_step, cfg), in_shardings=(state_sh, batch_sh, repl),
                    out_shardings=(state_sh, repl), donate_argnums=(0,)).lower(abs_state, abs_batch,
                                                                                perceptual).compile()
  stats_networks = tuple(n for n in setup._names(config.standing_stats.networks)
                         if n in cfg.generator_train_modes) if config.standing_stats.enabled else ()
  stats_fn = evaluation.make_stats_fn(cfg, stats_networks).lower(abs_gen, abs_batch).compile() \
      if stats_networks else None
  eval_names = [n for n in metrics_lib.parse_metrics(config.eval.periodic_metrics)
                if n in metrics_lib.DEVICE_METRICS]
  lpips = lpips_lib.LPIPS() if 'lpips' in eval_names else None
  lpips_vars = jax.device_put(lpips.variables, repl) if lpips else None
  eval_fn = evaluation.make_eval_fn(cfg, config.log.num_images, eval_names, lpips, out_sharding=repl).lower(
      abs_gen, abs_batch, lpips_vars).compile()
  abs_sum = jax.jit(lambda tree: sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)),
                    out_shardings=repl).lower(abs_state['params']).compile()
  compile_time = time.time() - compile_start
  logging.info('compiled the train step, evaluation and statistics functions in %.1f s', compile_time)
  _barrier(f'bilayer_jax/compiled/{stage}/{start}')
  if start == 0:
    if jax.process_index() == 0:
      writer.write_hparams({k: str(v) for k, v in config.to_dict().items() if not isinstance(v, dict)})
    # 'global': statistics of sharded arrays by collectives, so every process takes part (process 0 logs).
    overview = dict(state['params']['generator'], discriminator=state['params']['discriminator'])
    for net, tree in overview.items():
      parameter_overview.log_parameter_overview(tree, include_stats='global', msg=f'{net} parameters',
                                                jax_logging_process=0)
  writer.write_scalars(start, {'perf/compile_time_s': compile_time})

  def with_standing_stats(st, step):
    if not stats_fn:
      return st
    batches = _batches(_dataset(config, config.data.train_split, _data_seed(config.seed, step, 1)), batch_sh)
    count = config.standing_stats.num_batches
    new = evaluation.standing_statistics(stats_fn, st, (next(batches) for _ in range(count)), stats_networks)
    return jax.device_put(new, state_sh)

  def run_eval(st, step):
    batches = _batches(_dataset(config, config.data.eval_split, config.seed, shuffle=False), batch_sh)
    gen_vars = step_lib.model_variables(st)['generator']
    values = {}
    images = None
    for _ in range(config.log.eval_batches):
      metrics, columns = eval_fn(gen_vars, next(batches), lpips_vars)
      for k, v in jax.device_get(metrics).items():
        values.setdefault(k, []).append(np.asarray(v))
      images = images if images is not None else columns
    summary = {f'eval/{k}': float(np.concatenate(v).mean()) for k, v in values.items()}
    writer.write_scalars(step, summary)
    writer.write_images(step, {'eval/samples': evaluation.image_grid(images, config.log.num_images)[None]})
    logging.info('eval at step %d: %s', step, summary)
    return summary

  # --- loop ---------------------------------------------------------------------------------------
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  train_iter = _batches(_dataset(config, config.data.train_split, _data_seed(config.seed, start)), batch_sh)
  summary: Dict[str, Any] = {'stage': stage, 'start_step': start, 'source': source, 'metrics': {}}
  last_log, last_log_step = time.time(), start
  step = start
  bar = tqdm.auto.tqdm(total=num_steps, initial=start, desc=f'{stage} stage', unit='step',
                       disable=not config.log.progress_bar or jax.process_index() > 0)
  try:
    with metric_writers.ensure_flushes(writer):
      while step < num_steps:
        batch = next(train_iter)
        state, metrics = step_fn(state, batch, perceptual)
        step += 1
        metrics = jax.device_get(metrics)
        _check_finite(metrics, step)
        summary['metrics'][step] = {k: float(v) for k, v in metrics.items()}
        report(step)
        bar.update(1)
        if _due(step, config.log.every_steps) or step == num_steps:
          elapsed = time.time() - last_log
          rate = {'perf/step_time_s': elapsed / max(step - last_log_step, 1),
                  'perf/images_per_s': config.batch_size * config.data.num_target_frames *
                                       (step - last_log_step) / max(elapsed, 1e-9)}
          writer.write_scalars(step, {**{k: float(v) for k, v in metrics.items()}, **rate})
          bar.set_postfix({k.split('/')[-1]: f'{float(metrics[k]):.3g}' for k in _BAR_METRICS if k in metrics})
          last_log, last_log_step = time.time(), step
        if _due(step, config.log.image_every_steps):
          _, columns = eval_fn(step_lib.model_variables(state)['generator'], batch, lpips_vars)
          writer.write_images(step, {'train/samples': evaluation.image_grid(columns, config.log.num_images)[None]})
        preempted = guard.should_stop(manager, step)
        eval_now = _due(step, config.log.eval_every_steps) or step == num_steps
        save_now = _due(step, config.log.checkpoint_every_steps) or step == num_steps or preempted
        if eval_now or save_now:
          state = with_standing_stats(state, step)
        if eval_now and not preempted:
          summary['eval'] = run_eval(state, step)
        if save_now:
          _check_finite({'params': np.asarray(abs_sum(state['params']))}, step)
          checkpoints.save(manager, step, state, {'step': step, 'stage': stage, 'seed': config.seed}, force=True)
          # Re-seed the data at every checkpoint: a resumed run then sees the same batches.
          train_iter = _batches(_dataset(config, config.data.train_split, _data_seed(config.seed, step)), batch_sh)
        if preempted:
          logging.warning('preempted at step %d: checkpoint written, exiting', step)
          summary['preempted'] = True
          break
      manager.wait_until_finished()
  finally:
    bar.close()
    manager.close()
  summary['end_step'] = step
  if step >= num_steps:
    _write_params(workdir, cfg, state, config, repl)
  return summary
