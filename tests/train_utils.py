"""Helpers shared by the training-loop tests and their subprocess drivers: a tiny, fast config."""

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from bilayer_jax import config as config_lib  # pylint: disable=g-import-not-at-top
from bilayer_jax.models.fsth.config import FSTHConfig  # pylint: disable=g-import-not-at-top
from bilayer_jax.models.lpd.config import LPDConfig  # pylint: disable=g-import-not-at-top
from configs import common  # pylint: disable=g-import-not-at-top
from configs import demo  # pylint: disable=g-import-not-at-top
from configs import fsth_demo  # pylint: disable=g-import-not-at-top
from configs import lpd_demo  # pylint: disable=g-import-not-at-top

# The smallest FSTH that runs the whole architecture: 64² frames, width 4 (a 32-d embedding).
TINY_FSTH = FSTHConfig(image_size=64, padded_size=64, discriminator_pad_from=64, width=4)
# LPD at the parity fixtures' size (tests/fixtures/lpd_small): 64², encoders at 1/8 and x0.25 width.
TINY_LPD = LPDConfig(image_size=64, identity_dim=32, pose_dim=16, num_channels=4, max_num_channels=32,
                     resnext_stem=8, resnext_planes=(8, 16, 32, 64), resnext_groups=4, resnext_width_per_group=32,
                     mobilenet_width=0.25)


def tiny_config(data_dir: str, stage: str = 'base', num_steps: int = 4, batch_size: int = 2):
  """The demo config shrunk for tests: 2 identities per batch, logs/evals/checkpoints every 2 steps."""
  c = demo.get_config(stage)
  c.data.data_dir = str(data_dir)
  c.batch_size = batch_size
  c.num_steps = num_steps
  c.enhancer_num_steps = 2
  c.loss.per_vgg16_lpips_weight = 0.0  # the perceptual nets have their own tests; keep compiles short
  c.standing_stats.num_batches = 1
  common.short_run_logging(c, every=1, eval_every=2, eval_batches=1, keep=5)
  return c


def tiny_fsth_config(data_dir: str, num_steps: int = 4):
  """The FSTH demo config shrunk for tests: K = 2, 2 videos per batch, every period 2 steps."""
  c = fsth_demo.get_config()
  c.model = config_lib.to_config_dict(TINY_FSTH)
  c.data.data_dir = str(data_dir)
  c.data.num_source_frames = 2
  c.batch_size = 2
  c.num_steps = num_steps
  c.loss.lpips_vgg16_weight = 0.0  # the content networks have their own tests; keep compiles short
  common.short_run_logging(c, every=1, eval_every=2, eval_batches=1, keep=5)
  return c


def tiny_lpd_config(data_dir: str, num_steps: int = 4):
  """The LPD demo config shrunk for tests: the parity fixtures' sizes, K = 2, 2 videos per batch, every
  period 2 steps, no perceptual network (they have their own tests; keeps compiles short)."""
  c = lpd_demo.get_config()
  c.model = config_lib.to_config_dict(TINY_LPD)
  c.data.name = 'talking_heads/demo'  # the landmark crop (shared with the other families' tests)
  c.data.data_dir = str(data_dir)
  c.data.num_source_frames = 2
  c.batch_size = 2
  c.num_steps = num_steps
  c.loss.lpips_vgg16_weight = 0.0
  common.short_run_logging(c, every=1, eval_every=2, eval_batches=1, keep=5)
  return c
