"""Checks every training/evaluation config field with a meaningful range before anything is built or written.

`check(config)` (a `bilayer_jax.config.RunConfig`, or the ConfigDict it is converted from) raises one
`ConfigError` that names each bad field, its value and what is expected, e.g.
`config.batch_size=-1: expected an integer >= 1`. Periodic intervals (`log.*_every_steps`) accept 0 for
"never". The trainer and the evaluation call it first, so a typo in a value fails in a second, not after
compiling, and leaves no workdir behind.
"""

import os
from typing import Any, Callable, List, Optional, Sequence

import jax

from bilayer_jax import config as config_lib
from bilayer_jax import families
from bilayer_jax.config import ConfigError
from bilayer_jax.evaluators import metrics as metrics_lib

DTYPES = ('float32', 'bfloat16')
MATMUL_PRECISIONS = ('default', 'high', 'highest', 'bfloat16', 'tensorfloat32', 'float32')
ADV_PRED_TYPES = ('ragan', 'rgan', 'gan')
DISTANCE_TYPES = ('l1', 'mse')
EVAL_ENHANCE = ('auto', 'true', 'false')


class _Checker:
  """Collects `config.<field>=<value>: expected ...` problems."""

  def __init__(self, config: config_lib.RunConfig):
    self.config = config
    self.problems: List[str] = []

  def value(self, field: str) -> Any:
    node = self.config
    for part in field.split('.'):
      node = getattr(node, part)
    return node

  def expect(self, field: str, ok: Callable[[Any], bool], expected: str) -> None:
    value = self.value(field)
    try:
      good = ok(value)
    except (TypeError, ValueError):
      good = False
    if not good:
      self.problems.append(f'config.{field}={value!r}: expected {expected}')

  def integer(self, field: str, minimum: int, note: str = '') -> None:
    self.expect(field, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
                f'an integer >= {minimum}{note}')

  def positive(self, field: str) -> None:
    self.expect(field, lambda v: float(v) > 0, 'a number > 0')

  def non_negative(self, field: str) -> None:
    self.expect(field, lambda v: float(v) >= 0, 'a number >= 0 (0 = off)')

  def choice(self, field: str, allowed: Sequence[str]) -> None:
    self.expect(field, lambda v: v in allowed, f'one of {", ".join(allowed)}')

  def existing_path(self, field: str, what: str) -> None:
    value = self.value(field)
    if value and not os.path.exists(value):
      self.problems.append(f'config.{field}={value!r}: {what} does not exist')


def _stages(family) -> List[str]:
  names = [stage.name for stage in family.stages]
  return names + ['both'] if family.name == 'bilayer' else names  # 'both': base, then enhancer


def _check_run(c: _Checker, num_devices: int) -> None:
  family = families.get(c.value('family'))
  c.choice('stage', _stages(family))
  c.integer('seed', 0)
  c.integer('batch_size', 1)
  batch = c.value('batch_size')
  if isinstance(batch, int) and batch >= 1 and batch % num_devices:
    c.problems.append(f'config.batch_size={batch}: expected a multiple of the {num_devices} devices '
                      '(the global batch is split evenly over them)')
  c.integer('num_steps', 0)
  c.integer('enhancer_num_steps', 0)
  networks = family.networks
  c.expect('networks_to_train', lambda v: v and set(v) <= set(networks), f'names from {", ".join(networks)}')
  c.expect('optim.b1', lambda v: 0 <= float(v) < 1, 'a number in [0, 1)')
  c.expect('optim.b2', lambda v: 0 <= float(v) < 1, 'a number in [0, 1)')
  c.positive('optim.eps')
  c.existing_path('init_from', 'the params directory')
  c.existing_path('resume', 'the workdir to resume')


def _check_data(c: _Checker) -> None:
  c.integer('data.num_source_frames', 1)
  c.integer('data.num_target_frames', 1)
  c.integer('data.shuffle_buffer', 1)
  c.expect('data.name', lambda v: bool(str(v).strip()), 'a tfds dataset name, e.g. talking_heads/voxceleb2')
  if not c.value('data.demo'):
    c.existing_path('data.data_dir', 'the tfds data directory')


def _check_bilayer(c: _Checker) -> None:
  """The bi-layer family's optim, loss and model sections."""
  for net in families.get('bilayer').networks:
    c.positive(f'optim.lrs.{net}')
  c.choice('loss.adv_pred_type', ADV_PRED_TYPES)
  c.choice('loss.fem_loss_type', DISTANCE_TYPES)
  c.choice('loss.pix_loss_type', DISTANCE_TYPES)
  for field in ('adv_loss_weight', 'fem_loss_weight', 'per_vgg19_weight', 'per_vggface_weight',
                'per_vgg16_lpips_weight', 'pix_loss_weight', 'seg_loss_weight', 'wpr_loss_weight'):
    c.non_negative(f'loss.{field}')
  c.expect('loss.per_layer_weights', lambda v: len(v) == 5 and all(w >= 0 for w in v),
           'five weights >= 0 (one per VGG block)')
  c.choice('train.remat', ('none', 'convs', 'full'))
  c.expect('eval.num_source_frames', lambda v: v == 1, '1 (the bi-layer model is one-shot)')
  c.expect('eval.finetune_steps', lambda v: v == 0, '0 (fine-tuning is for the fsth family)')
  try:
    c.value('model').validate(with_enhancer=c.value('stage') != 'base')
  except (TypeError, ValueError) as e:
    c.problems.append(f'config.model: {e}')


def _check_fsth(c: _Checker) -> None:
  """The FSTH family's optim, loss and model sections."""
  c.positive('optim.generator_lr')
  c.positive('optim.discriminator_lr')
  c.integer('optim.discriminator_updates', 0)
  c.expect('train.remat', lambda v: v == 'none', "'none' (rematerialisation is implemented for bi-layer)")
  for field in ('vgg19_weight', 'vggface_weight', 'lpips_vgg16_weight', 'feature_matching_weight',
                'match_weight'):
    c.non_negative(f'loss.{field}')
  try:
    c.value('model').validate()
  except (TypeError, ValueError) as e:
    c.problems.append(f'config.model: {e}')


def _check_lpd(c: _Checker) -> None:
  """The LPD family's optim, loss and model sections."""
  for prefix in ('', 'finetune_'):
    c.choice(f'optim.{prefix}optimizer', ('adam', 'radam'))
    c.positive(f'optim.{prefix}generator_lr')
    c.positive(f'optim.{prefix}discriminator_lr')
    c.expect(f'optim.{prefix}ema_decay', lambda v: 0 <= v < 1, 'a value in [0, 1)')
  c.expect('train.remat', lambda v: v == 'none', "'none' (rematerialisation is implemented for bi-layer)")
  for field in ('perceptual_weight', 'vggface_weight', 'lpips_vgg16_weight', 'feature_matching_weight',
                'dis_embed_weight', 'dice_weight'):
    c.non_negative(f'loss.{field}')
  c.expect('loss.dice_real_channels', lambda v: v in (1, 3), '1 or 3')
  try:
    c.value('model').validate()
  except (TypeError, ValueError) as e:
    c.problems.append(f'config.model: {e}')


# The checks of each family's own sections (optim, loss, model); a test checks every family has one.
FAMILY_CHECKS = {'bilayer': _check_bilayer, 'fsth': _check_fsth, 'lpd': _check_lpd}


def _check_train(c: _Checker) -> None:
  c.existing_path('loss.perceptual_weights_dir', 'the perceptual weights folder')
  c.choice('train.dtype', DTYPES)
  c.choice('train.matmul_precision', MATMUL_PRECISIONS)
  c.integer('mesh.fsdp_min_size', 0)
  if c.value('standing_stats.enabled'):
    c.integer('standing_stats.num_batches', 1)
    networks = families.get(c.value('family')).networks
    c.expect('standing_stats.networks', lambda v: set(v) <= set(networks), f'names from {", ".join(networks)}')


def _check_log_and_eval(c: _Checker) -> None:
  for field in ('every_steps', 'image_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    c.integer(f'log.{field}', 0, ' (0 = never)')
  c.integer('log.keep_checkpoints', 1)
  c.integer('log.eval_batches', 1)
  c.integer('log.num_images', 1)
  for field in ('metrics', 'periodic_metrics'):
    c.expect(f'eval.{field}', lambda v: all(n in metrics_lib.ALL_METRICS for n in v),
             f'names from {", ".join(metrics_lib.ALL_METRICS)}')
  c.choice('eval.mask', metrics_lib.MASK_MODES)
  c.choice('eval.enhance', EVAL_ENHANCE)
  c.integer('eval.max_targets', 0)
  c.integer('eval.max_videos', 0)
  c.integer('eval.grid_rows', 1)
  c.integer('eval.num_source_frames', 1)
  c.integer('eval.finetune_steps', 0)
  c.existing_path('eval.params', 'the params or run directory to evaluate')
  c.existing_path('eval.arcface_weights', 'the ArcFace weights file')


def check(config: Any, num_devices: Optional[int] = None) -> None:
  """Raises ConfigError naming every out-of-range field of a training config (see module docstring)."""
  checker = _Checker(config_lib.from_config_dict(config))
  _check_run(checker, num_devices or jax.device_count())
  for part in (_check_data, _check_train, _check_log_and_eval, FAMILY_CHECKS[checker.config.family]):
    part(checker)
  if checker.problems:
    raise ConfigError('; '.join(checker.problems))


def check_demo_prepared(config: config_lib.RunConfig) -> None:
  """Raises ConfigError when `data.demo` is set but the demo dataset has not been located yet.

  The library never builds datasets: entry points call `data_prep.demo.prepare(config)` first (run.py and
  the notebooks do), which fills in `data.data_dir`.
  """
  if config.data.demo and not config.data.data_dir:
    raise ConfigError('config.data.demo=True but config.data.data_dir is empty: build the demo dataset first '
                      '(data_prep.demo.prepare(config), as run.py does) or set config.data.data_dir')
