"""Subprocess driver of test_train_scale: two train steps on 1 device vs sharded over 8 fake CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_step_driver.py OUT.npz

Runs the same two steps (same fresh state, same two global batches of 8 identities) single-device,
single-device with the batch order reversed (the float32 noise floor), data parallel (mesh of 8) and FSDP
(parameters and Adam moments sharded over the 8 devices), and writes the metrics and state after each step
to OUT.npz ('<mode>/step<i>/metrics/<name>', '<mode>/step<i>/state<path>') plus how many state leaves
each mode sharded ('<mode>/num_sharded').
"""

import functools
import sys

import jax
import numpy as np

import train_utils  # pylint: disable=g-bad-import-order  (puts the repo on sys.path)
from bilayer_jax.families.bilayer import objective as step_lib
from bilayer_jax.families.bilayer import setup
from bilayer_jax.train import sharding

BATCH = 8


def _batch(rng: np.random.Generator, cfg) -> dict:
  s, c = cfg.model.image_size, cfg.model.pse_in_channels
  img = lambda: rng.uniform(-1, 1, (BATCH, 1, s, s, 3)).astype(np.float32)
  seg = lambda: (rng.uniform(0, 1, (BATCH, 1, s, s, 1)) > 0.5).astype(np.float32)
  pose = lambda: rng.uniform(-1, 1, (BATCH, 1, c)).astype(np.float32)
  return {'source_imgs': img(), 'source_segs': seg(), 'source_stickmen': img(), 'source_poses': pose(),
          'target_imgs': img(), 'target_segs': seg(), 'target_stickmen': img(), 'target_poses': pose()}


def _run(cfg, variables, batches, devices, fsdp: bool):
  mesh = sharding.make_mesh(devices)
  abstract = jax.eval_shape(functools.partial(step_lib.init_state, cfg), variables)
  state_sh = sharding.state_shardings(abstract, mesh, fsdp=fsdp, min_size=1024)
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  state = jax.jit(functools.partial(step_lib.init_state, cfg), out_shardings=state_sh)(
      jax.device_put(variables, repl))
  step = jax.jit(functools.partial(step_lib.train_step, cfg), in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, repl), donate_argnums=(0,))
  states, metrics = [], []
  for batch in batches:
    state, m = step(state, jax.device_put(batch, batch_sh))
    states.append(jax.device_get(state))  # before the next step donates it
    metrics.append(jax.device_get(m))
  num_sharded = sum(not s.is_fully_replicated for s in jax.tree_util.tree_leaves(state_sh))
  return states, metrics, num_sharded


def main(out_path: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  config = train_utils.tiny_config('', batch_size=BATCH)
  cfg = setup.step_config(config, 'base')
  rng = np.random.default_rng(0)
  batches = [_batch(rng, cfg) for _ in range(2)]
  shapes = step_lib.variable_shapes(cfg, batches[0])
  variables = step_lib.init_variables(cfg, 0, shapes)
  results = {}
  # 'permuted': single device with the identities of each batch in reverse order, the same computation up to
  # float32 summation order. Its distance to 'single' is the rounding noise floor the sharded runs are held to.
  reverse = [{k: v[::-1] for k, v in b.items()} for b in batches]
  for mode, devices, fsdp, data in (('single', jax.devices()[:1], False, batches),
                                    ('permuted', jax.devices()[:1], False, reverse),
                                    ('dp', jax.devices(), False, batches), ('fsdp', jax.devices(), True, batches)):
    states, metrics, num_sharded = _run(cfg, variables, data, devices, fsdp)
    results[f'{mode}/num_sharded'] = np.asarray(num_sharded)
    for i, (state, m) in enumerate(zip(states, metrics)):
      results.update({f'{mode}/step{i + 1}/metrics/{k}': np.asarray(v) for k, v in m.items()})
      flat = jax.tree_util.tree_flatten_with_path(state)[0]
      results.update({f'{mode}/step{i + 1}/state{jax.tree_util.keystr(p)}': np.asarray(v) for p, v in flat})
  np.savez(out_path, **results)


if __name__ == '__main__':
  main(sys.argv[1])
