"""The FSTH family's training setup: run config -> MetaStepConfig, the content-loss networks, a dummy batch,
and imported variables merged into a fresh state."""

from typing import Any, Dict, Mapping


from bilayer_jax import config as config_lib
from bilayer_jax import model_io
from bilayer_jax.convert import perceptual
from bilayer_jax.families import video_table
from bilayer_jax.families.fsth import objective
from bilayer_jax.families.fsth import training


def objective_config(config: config_lib.RunConfig, num_video_rows: int = 0) -> objective.MetaStepConfig:
  """The losses, optimisers and architecture of a run config as the objective takes them."""
  loss, optim = config.loss, config.optim
  return objective.MetaStepConfig(
      model=config.model.validate(), vgg19_weight=loss.vgg19_weight, vggface_weight=loss.vggface_weight,
      lpips_vgg16_weight=loss.lpips_vgg16_weight, feature_matching_weight=loss.feature_matching_weight,
      match_weight=loss.match_weight, target_in_sources=loss.target_in_sources,
      generator_lr=optim.generator_lr, discriminator_lr=optim.discriminator_lr,
      discriminator_updates=optim.discriminator_updates, adam_b1=optim.b1, adam_b2=optim.b2, adam_eps=optim.eps,
      reload_rows_through_leaky_relu=optim.reload_rows_through_leaky_relu, networks_to_train=training.NETWORKS,
      num_video_rows=num_video_rows)


def step_config(config: Any, stage: str) -> objective.MetaStepConfig:
  """The static MetaStepConfig of the 'meta' stage of a run config (or its ConfigDict)."""
  config = config_lib.from_config_dict(config)
  if stage != 'meta':
    raise config_lib.ConfigError(f"config.stage={stage!r}: the fsth family trains stage 'meta'")
  if config.train.dtype != 'float32':
    raise config_lib.ConfigError(f'config.train.dtype={config.train.dtype!r}: the fsth family trains in float32')
  if set(config.networks_to_train) != set(training.NETWORKS):
    raise config_lib.ConfigError(f'config.networks_to_train={config.networks_to_train}: meta-learning trains '
                                 f'{", ".join(training.NETWORKS)} together')
  return objective_config(config, video_table.num_video_rows(config))


def content_params(config: config_lib.RunConfig, cfg: objective.MetaStepConfig) -> Dict[str, Any]:
  """Loads the frozen networks of the content loss (clear error naming a missing file)."""
  return perceptual.load_loss_networks(cfg.content_terms, config.loss.perceptual_weights_dir, 'content loss')


def merge_init(cfg: objective.MetaStepConfig, state: Mapping[str, Any], variables: Mapping[str, Any],
               source: str = 'init_from') -> Dict[str, Any]:
  """The networks of imported variables (a params directory) copied into a fresh state, shapes checked;
  fresh optimiser states; the per-video table stays as initialised (it belongs to this run's data)."""
  current = training.model_variables(state)
  merged = {}
  for side in ('generator', 'discriminator'):
    if side not in variables:
      merged[side] = current[side]
      continue
    model_io.check_shapes(current[side], variables[side], f'{source}: {side}')
    merged[side] = variables[side]
  fresh = training.init_state(cfg, {**merged, 'video_rows': state['video_table']['rows']})
  return {**fresh, 'step': state['step'], 'video_table': state['video_table']}
