"""Subprocess driver of test_lpd_training's sharded test: two LPD meta-learning steps on 1 device vs over 8
fake CPU devices with the projection table split by rows.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/lpd_sharded_driver.py OUT.npz

Runs in float64: the embedder's gradients through BatchNorm over small batches are rounding-sensitive (a
different float32 reduction order over 8 shards moves them by ~0.2 %), float64 makes the comparison strict.
Writes the metrics and the table after each step ('<mode>/step<i>/...'), the generator-side parameters and
BatchNorm statistics after the last step, and the table's sharding spec on the mesh ('<mode>/table_spec').
"""

import functools
import sys

import jax
import numpy as np

import train_utils  # pylint: disable=g-bad-import-order  (puts the repo on sys.path)
from bilayer_jax.families.lpd import objective
from bilayer_jax.families.lpd import training
from bilayer_jax.train import sharding

BATCH = 8
ROWS = 16


def _batch(rng: np.random.Generator, cfg, index) -> dict:
  s = cfg.model.image_size
  image = lambda k: rng.uniform(-1, 1, (BATCH, k, s, s, 3)).astype(np.float32)
  return {'source_imgs': image(2), 'target_imgs': image(1), 'pose_imgs': image(1),
          'target_segs': rng.uniform(0, 1, (BATCH, 1, s, s, 1)).astype(np.float32),
          'video_index': np.asarray(index, np.int32)}


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
    table = jax.device_get(state['video_table'])
    out.update({f'step{i + 1}/table/{k}': np.asarray(table[k]) for k in ('embedding', 'u')})
  for name, tree in (('params', state['params']['generator']), ('stats', state['model_state']['generator'])):
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    out.update({f'{name}{jax.tree_util.keystr(p)}': np.asarray(v) for p, v in flat})
  return out, state_sh['video_table']['embedding'].spec


def _float64(tree):
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype.kind == 'f' else np.asarray(x), tree)


def main(out_path: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  jax.config.update('jax_enable_x64', True)
  cfg = objective.StepConfig(model=train_utils.TINY_LPD, perceptual_weight=0, vggface_weight=0,
                             num_video_rows=ROWS)
  rng = np.random.default_rng(0)
  batches = [_float64(_batch(rng, cfg, [0, 3, 5, 6, 9, 10, 13, 15])),
             _float64(_batch(rng, cfg, [1, 3, 4, 7, 8, 10, 12, 14]))]
  variables = _float64(training.init_variables(cfg, 0, None))
  results = {}
  for mode, devices in (('single', jax.devices()[:1]), ('sharded', jax.devices())):
    out, spec = _run(cfg, variables, batches, devices)
    results.update({f'{mode}/{k}': v for k, v in out.items()})
    results[f'{mode}/table_spec'] = np.asarray(str(spec))
  np.savez(out_path, **results)


if __name__ == '__main__':
  main(sys.argv[1])
