"""What a training stage builds before its first step: the state's layout and the compiled functions.

Everything is compiled up front, before the hosts synchronise: with several processes, a host that reached
its first collective long before the others would time out.
"""

import dataclasses
import functools
import time
from typing import Any, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp

from bilayer_jax import config as config_lib
from bilayer_jax.evaluators import lpips as lpips_lib
from bilayer_jax.evaluators import metrics as metrics_lib
from bilayer_jax.families import base
from bilayer_jax.train import checkpoints
from bilayer_jax.train import sharding


def state_layout(training: base.Training, config: config_lib.RunConfig, cfg, mesh):
  """(variable shapes, abstract training state, its shardings) of one stage, without computing anything."""
  shapes = training.variable_shapes(cfg, training.dummy_batch(config))
  abstract_state = jax.eval_shape(functools.partial(training.init_state, cfg), shapes)
  state_sh = sharding.state_shardings(abstract_state, mesh, config.mesh.fsdp, config.mesh.fsdp_min_size,
                                      training.row_sharded)
  return shapes, abstract_state, state_sh


@dataclasses.dataclass
class StageFunctions:
  """The compiled functions of one stage.

  Attributes:
    train_step: (state, batch, frozen params) -> (state, metrics); donates the state.
    stats: the standing-statistics pass (None when off or no network of this stage has BN in train mode).
    stats_networks: the networks whose BN statistics `stats` recomputes.
    evaluate: (generator variables, batch, LPIPS variables) -> (metrics, image columns).
    lpips_vars: LPIPS variables on the devices (None without the lpips metric).
    abs_sum: sum of |parameters| (the NaN/Inf check before a checkpoint).
    seconds: compile time.
  """
  train_step: Any
  stats: Optional[Any]
  stats_networks: Tuple[str, ...]
  evaluate: Any
  lpips_vars: Optional[Any]
  abs_sum: Any
  seconds: float


def _abs_sum(tree):
  return sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree))


def compile_functions(training: base.Training, config: config_lib.RunConfig, cfg, abstract_state, state_sh,
                      batch_sh, repl, frozen) -> StageFunctions:
  """Lowers and compiles every function the stage's loop calls, for the given shardings."""
  start = time.time()
  abs_state = checkpoints.with_shardings(abstract_state, state_sh)
  abs_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
               for k, v in training.dummy_batch(config).items()}
  abs_gen = training.model_variables(abs_state)['generator']
  train_step = jax.jit(functools.partial(training.train_step, cfg), in_shardings=(state_sh, batch_sh, repl),
                       out_shardings=(state_sh, repl), donate_argnums=(0,)).lower(
                           abs_state, abs_batch, frozen).compile()
  stats_networks = ()
  if config.standing_stats.enabled:
    stats_networks = tuple(n for n in config.standing_stats.networks if n in cfg.generator_train_modes)
  stats_fn = training.make_stats_fn(cfg, stats_networks) if stats_networks else None
  stats = stats_fn.lower(abs_gen, abs_batch).compile() if stats_fn is not None else None
  eval_names = [n for n in metrics_lib.parse_metrics(config.eval.periodic_metrics) if n in metrics_lib.DEVICE_METRICS]
  lpips = lpips_lib.LPIPS() if 'lpips' in eval_names else None
  lpips_vars = jax.device_put(lpips.variables, repl) if lpips else None
  evaluate = training.make_eval_fn(cfg, config.log.num_images, eval_names, lpips, out_sharding=repl).lower(
      abs_gen, abs_batch, lpips_vars).compile()
  abs_sum = jax.jit(_abs_sum, out_shardings=repl).lower(abs_state['params']).compile()
  seconds = time.time() - start
  logging.info('compiled the train step, evaluation and statistics functions in %.1f s', seconds)
  return StageFunctions(train_step, stats, stats_networks, evaluate, lpips_vars, abs_sum, seconds)
