"""What the families with a per-video discriminator table (FSTH, LPD) share in their training setup: the
table's row count from the dataset, and a dummy batch that carries each example's video index."""

from typing import Dict

import jax
import jax.numpy as jnp

from bilayer_jax import config as config_lib
from bilayer_jax.data import input_pipeline


def num_video_rows(config: config_lib.RunConfig) -> int:
  """Rows of the per-video matrix: the training split's examples, padded to a multiple of the devices
  (the table is sharded by rows; the padding rows are never drawn)."""
  builder = input_pipeline.load_builder(config.data.data_dir or None, config.data.name)
  split = config.data.train_split
  if split not in builder.info.splits:
    raise config_lib.ConfigError(f'config.data.train_split={split!r}: the dataset {config.data.name} has '
                                 f'splits {", ".join(sorted(builder.info.splits))}')
  count, devices = builder.info.splits[split].num_examples, jax.device_count()
  return -(-count // devices) * devices


def dummy_batch(config: config_lib.RunConfig) -> Dict[str, jax.Array]:
  """Zeros shaped like one global training batch of the input pipeline (with the video index)."""
  s, b = config.model.image_size, config.batch_size
  n, t = config.data.num_source_frames, config.data.num_target_frames
  frames = lambda count, channels: jnp.zeros((b, count, s, s, channels))
  return {'source_imgs': frames(n, 3), 'source_segs': frames(n, 1), 'source_stickmen': frames(n, 3),
          'source_poses': jnp.zeros((b, n, 136)), 'target_imgs': frames(t, 3), 'target_segs': frames(t, 1),
          'target_stickmen': frames(t, 3), 'target_poses': jnp.zeros((b, t, 136)),
          'video_index': jnp.zeros((b,), jnp.int32)}
