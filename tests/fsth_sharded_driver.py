"""Subprocess driver of test_fsth_training's sharded test: two FSTH meta-learning steps on 1 device vs over 8
fake CPU devices with the per-video table split by rows.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/fsth_sharded_driver.py OUT.npz

Writes the metrics and the table after each step ('<mode>/step<i>/...'), the generator-side parameters
after the last step, and the table's sharding spec on the mesh ('sharded/table_spec').
"""

import functools
import sys

import jax
import numpy as np

import train_utils  # pylint: disable=g-bad-import-order  (puts the repo on sys.path)
from bilayer_jax.families.fsth import objective
from bilayer_jax.families.fsth import training
from bilayer_jax.train import sharding

BATCH = 8
ROWS = 16


def _batch(rng: np.random.Generator, cfg, index) -> dict:
  s = cfg.model.image_size
  image = lambda k: rng.uniform(-1, 1, (BATCH, k, s, s, 3)).astype(np.float32)
  return {'source_imgs': image(2), 'source_stickmen': image(2), 'target_imgs': image(1),
          'target_stickmen': image(1), 'video_index': np.asarray(index, np.int32)}


def _run(cfg, variables, batches, devices):
  mesh = sharding.make_mesh(devices)
  abstract = jax.eval_shape(functools.partial(training.init_state, cfg), variables)
  state_sh = sharding.state_shardings(abstract, mesh, row_sharded=training.ROW_SHARDED)
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  state = jax.jit(functools.partial(training.init_state, cfg), out_shardings=state_sh)(
      jax.device_put(variables, repl))
  step = jax.jit(lambda s, b: training.train_step(cfg, s, b, {}), in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, repl), donate_argnums=(0,))
  out = {}
  for i, batch in enumerate(batches):
    state, metrics = step(state, jax.device_put(batch, batch_sh))
    out.update({f'step{i + 1}/metrics/{k}': np.asarray(v) for k, v in jax.device_get(metrics).items()})
    out.update({f'step{i + 1}/table/{k}': np.asarray(v) for k, v in jax.device_get(state['video_table']).items()})
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state['params']['generator']))[0]
  out.update({f'params{jax.tree_util.keystr(p)}': np.asarray(v) for p, v in flat})
  return out, state_sh['video_table']['rows'].spec


def main(out_path: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  cfg = objective.MetaStepConfig(model=train_utils.TINY_FSTH, vgg19_weight=0, vggface_weight=0, num_video_rows=ROWS)
  rng = np.random.default_rng(0)
  # Videos spread over every shard; the second batch draws some of the first's again (moments carried on).
  batches = [_batch(rng, cfg, [0, 3, 5, 6, 9, 10, 13, 15]), _batch(rng, cfg, [1, 3, 4, 7, 8, 10, 12, 14])]
  variables = training.init_variables(cfg, 0, None)
  results = {}
  for mode, devices in (('single', jax.devices()[:1]), ('sharded', jax.devices())):
    out, spec = _run(cfg, variables, batches, devices)
    results.update({f'{mode}/{k}': v for k, v in out.items()})
    results[f'{mode}/table_spec'] = np.asarray(str(spec))
  np.savez(out_path, **results)


if __name__ == '__main__':
  main(sys.argv[1])
