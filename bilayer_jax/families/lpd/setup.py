"""The LPD family's training setup: run config -> StepConfig, the perceptual networks, a dummy batch, and
imported variables merged into a fresh state."""

import dataclasses
import functools
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp

from bilayer_jax import config as config_lib
from bilayer_jax import model_io
from bilayer_jax.convert import perceptual
from bilayer_jax.data import pose_augment
from bilayer_jax.families import video_table
from bilayer_jax.families.lpd import objective
from bilayer_jax.families.lpd import training


def objective_config(config: config_lib.RunConfig, num_video_rows: int = 0) -> objective.StepConfig:
  """The losses, optimisers and architecture of a run config as the objective takes them (meta-learning;
  `.finetuning()` with the optim section's finetune_* values for fine-tuning)."""
  loss, optim = config.loss, config.optim
  return objective.StepConfig(
      model=config.model.validate(), perceptual_weight=loss.perceptual_weight, vggface_weight=loss.vggface_weight,
      lpips_vgg16_weight=loss.lpips_vgg16_weight, feature_matching_weight=loss.feature_matching_weight,
      dis_embed_weight=loss.dis_embed_weight, dice_weight=loss.dice_weight,
      dice_real_channels=loss.dice_real_channels, optimizer=optim.optimizer, generator_lr=optim.generator_lr,
      discriminator_lr=optim.discriminator_lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, ema_decay=optim.ema_decay,
      networks_to_train=training.NETWORKS, num_video_rows=num_video_rows, seed=config.seed)


def finetune_config(config: config_lib.RunConfig) -> objective.StepConfig:
  """Fine-tuning's StepConfig (configs/finetuning-base.yaml's settings from the optim section)."""
  optim = config.optim
  return dataclasses.replace(objective_config(config).finetuning(), optimizer=optim.finetune_optimizer,
                             generator_lr=optim.finetune_generator_lr,
                             discriminator_lr=optim.finetune_discriminator_lr, ema_decay=optim.finetune_ema_decay)


def step_config(config: Any, stage: str) -> objective.StepConfig:
  """The static StepConfig of the 'meta' stage of a run config (or its ConfigDict)."""
  config = config_lib.from_config_dict(config)
  if stage != 'meta':
    raise config_lib.ConfigError(f"config.stage={stage!r}: the lpd family trains stage 'meta'")
  if config.train.dtype != 'float32':
    raise config_lib.ConfigError(f'config.train.dtype={config.train.dtype!r}: the lpd family trains in float32')
  if set(config.networks_to_train) != set(training.NETWORKS):
    raise config_lib.ConfigError(f'config.networks_to_train={config.networks_to_train}: meta-learning trains '
                                 f'{", ".join(training.NETWORKS)} together')
  return objective_config(config, video_table.num_video_rows(config))


def perceptual_params(config: config_lib.RunConfig, cfg: objective.StepConfig) -> Dict[str, Any]:
  """Loads the frozen networks of the perceptual terms in use (clear error naming a missing file)."""
  return perceptual.load_loss_networks([(spec, weight) for _, spec, weight, _ in cfg.perceptual_terms],
                                       config.loss.perceptual_weights_dir)


def pose_augmentation(config: config_lib.RunConfig, training_split: bool):
  """The input pipeline's pose frame: augmented on the training split (the loss section's augment_*
  switches), the target frame as it is elsewhere."""
  loss = config.loss
  return functools.partial(pose_augment.augment_pose_example, pixelwise=loss.augment_pixelwise and training_split,
                           scale=loss.augment_scale and training_split, shift=loss.augment_shift and training_split)


def dummy_batch(config: config_lib.RunConfig) -> Dict[str, jax.Array]:
  """Zeros shaped like one global training batch of the input pipeline (video index, augmented pose)."""
  batch = video_table.dummy_batch(config)
  s, b = config.model.image_size, config.batch_size
  return {**batch, 'pose_imgs': jnp.zeros((b, 1, s, s, 3))}


def merge_init(cfg: objective.StepConfig, state: Mapping[str, Any], variables: Mapping[str, Any],
               source: str = 'init_from') -> Dict[str, Any]:
  """The networks of imported variables (a params directory) copied into a fresh state, shapes checked;
  fresh optimiser states and EMA; the projection table stays as initialised (it belongs to this run's data)."""
  current = training.model_variables(state)
  merged = {}
  for side in ('generator', 'discriminator'):
    if side not in variables:
      merged[side] = current[side]
      continue
    model_io.check_shapes(current[side], variables[side], f'{source}: {side}')
    merged[side] = variables[side]
  table = {'params': {'embedding': state['video_table']['embedding']},
           'spectral': {'u': state['video_table']['u'], 'v': state['model_state']['discriminator']['table_v']}}
  fresh = training.init_state(cfg, {**merged, 'table': table})
  return {**fresh, 'step': state['step']}
