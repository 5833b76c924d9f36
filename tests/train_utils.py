"""Helpers shared by the training-loop tests and their subprocess drivers: a tiny, fast config."""

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from configs import demo  # pylint: disable=g-import-not-at-top


def tiny_config(data_dir: str, stage: str = 'base', num_steps: int = 4, batch_size: int = 2):
  """The demo config shrunk for tests: 2 identities per batch, logs/evals/checkpoints every 2 steps."""
  c = demo.get_config(stage)
  c.data.data_dir = str(data_dir)
  c.batch_size = batch_size
  c.num_steps = num_steps
  c.enhancer_num_steps = 2
  c.loss.per_vgg16_lpips_weight = 0.0  # the perceptual nets have their own tests; keep compiles short
  c.standing_stats.num_batches = 1
  c.log.every_steps = 1
  c.log.image_every_steps = 2
  c.log.eval_every_steps = 2
  c.log.eval_batches = 1
  c.log.checkpoint_every_steps = 2
  c.log.keep_checkpoints = 5
  return c
