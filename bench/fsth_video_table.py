r"""Memory of FSTH's per-video matrix at VoxCeleb2 scale: the table split by rows vs replicated, per device.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/fsth_video_table.py [--videos 150000]

Compiles the real FSTH meta-learning step (`bilayer_jax.families.fsth.training.train_step`) at the
reference's widths (512-d embeddings) for a mesh over all local devices (8 fake CPU devices by default,
or the accelerators), once with the per-video table (rows + Adam moments + step counts) split by rows as
the trainer does and once replicated, and prints XLA's memory analysis per device: arguments (the state
and the batch), temporaries, and the table's own bytes. 64² frames, K = 2 and one video per device keep
the compile short; the table's cost does not depend on them. Nothing is executed.
"""

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from bilayer_jax.families.fsth import objective  # pylint: disable=g-import-not-at-top
from bilayer_jax.families.fsth import training  # pylint: disable=g-import-not-at-top
from bilayer_jax.models.fsth.config import FSTHConfig  # pylint: disable=g-import-not-at-top
from bilayer_jax.train import sharding  # pylint: disable=g-import-not-at-top

GB = 2**30


def _abstract_batch(cfg, batch: int):
  s = cfg.model.image_size
  image = lambda k: jax.ShapeDtypeStruct((batch, k, s, s, 3), jnp.float32)
  return {'source_imgs': image(2), 'source_stickmen': image(2), 'target_imgs': image(1),
          'target_stickmen': image(1), 'video_index': jax.ShapeDtypeStruct((batch,), jnp.int32)}


def measure(cfg, row_sharded: bool):
  """XLA's per-device memory analysis of the compiled step (GB) and the table's bytes per device."""
  mesh = sharding.make_mesh()
  devices = mesh.devices.size
  batch = _abstract_batch(cfg, devices)
  shapes = training.variable_shapes(cfg, {'source_imgs': jnp.zeros((1, 1) + batch['source_imgs'].shape[2:])})
  state = jax.eval_shape(functools.partial(training.init_state, cfg), shapes)
  state_sh = sharding.state_shardings(state, mesh, row_sharded=training.ROW_SHARDED if row_sharded else ())
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  step = jax.jit(lambda s, b: training.train_step(cfg, s, b, {}), in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, repl), donate_argnums=(0,))
  analysis = step.lower(state, batch).compile().memory_analysis()
  table_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state['video_table']))
  return {'arguments': analysis.argument_size_in_bytes / GB, 'temporaries': analysis.temp_size_in_bytes / GB,
          'table': table_bytes / (devices if row_sharded else 1) / GB, 'devices': devices}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--videos', type=int, default=150_000, help='rows of the table (VoxCeleb2 dev: ~150k)')
  args = parser.parse_args()
  devices = jax.device_count()
  model = FSTHConfig(image_size=64, padded_size=64, discriminator_pad_from=64)
  cfg = objective.MetaStepConfig(model=model, vgg19_weight=0, vggface_weight=0,
                                 num_video_rows=-(-args.videos // devices) * devices)
  print(f'FSTH step, {cfg.num_video_rows} videos x {model.embedding_dim}, {devices} {jax.devices()[0].platform} '
        'devices; GB per device')
  print(f'{"table":<12}{"table":>10}{"arguments":>12}{"temporaries":>13}')
  rows = {}
  for name, row_sharded in (('replicated', False), ('by rows', True)):
    rows[name] = measure(cfg, row_sharded)
    r = rows[name]
    print(f'{name:<12}{r["table"]:>10.3f}{r["arguments"]:>12.3f}{r["temporaries"]:>13.3f}')
  total = lambda r: r['arguments'] + r['temporaries']
  print(f'arguments + temporaries, by rows / replicated: {total(rows["by rows"]) / total(rows["replicated"]):.3f}')


if __name__ == '__main__':
  main()
