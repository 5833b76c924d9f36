"""What every config file builds on: the paper's two stages as ConfigDicts.

The fields, their defaults and what each section means are defined once, in `bilayer_jax/config.py`
(`RunConfig`); this module only turns them into the user-facing ml_collections format and states how the
enhancer stage differs from the base stage.
"""

import dataclasses

import ml_collections

from bilayer_jax import config as config_lib
from bilayer_jax.models.config import BilayerConfig


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The architecture (paper defaults, `BilayerConfig`) with `overrides`, as a ConfigDict."""
  return config_lib.to_config_dict(dataclasses.replace(BilayerConfig(), **overrides))


def base_config() -> ml_collections.ConfigDict:
  """The paper's stage-1 training (docs/model.md#paper-configuration)."""
  return config_lib.to_config_dict(config_lib.RunConfig())


def enhancer_config() -> ml_collections.ConfigDict:
  """The paper's stage 2 with the intended routing (docs/original_bugs.md#the-enhancer-stage-trains-nothing)."""
  c = base_config()
  c.stage = 'enhancer'
  c.networks_to_train = ('texture_enhancer', 'discriminator')
  c.loss.wpr_loss_weight = 0.0  # the enhancer script drops the warping regulariser
  c.standing_stats.enabled = False  # base networks are frozen in eval mode (stats_calc off in the script)
  return c


def short_run_logging(c: ml_collections.ConfigDict, every: int, eval_every: int, eval_batches: int,
                      keep: int) -> None:
  """Log/eval/image/checkpoint periods for a run of a few dozen steps (the demos and the tests)."""
  c.log.every_steps = every
  c.log.image_every_steps = c.log.eval_every_steps = c.log.checkpoint_every_steps = eval_every
  c.log.eval_batches = eval_batches
  c.log.keep_checkpoints = keep
