"""The bi-layer model's training setup: run config -> StepConfig, the perceptual weights, a dummy batch, and
imported variables merged into a fresh state."""

import dataclasses
import os
import pathlib
from typing import Any, Dict

import jax
import jax.numpy as jnp

from bilayer_jax import config as config_lib
from bilayer_jax import model_io
from bilayer_jax.convert import perceptual
from bilayer_jax.families.bilayer import objective
from bilayer_jax.models import vgg
from bilayer_jax.models.config import NETWORK_NAMES

# Run-config loss fields -> the perceptual network each one weighs (bilayer_jax.models.vgg.PERCEPTUAL_NETS).
PERCEPTUAL_WEIGHT_FIELDS = (('per_vgg19_weight', 'vgg19_imagenet_pytorch'), ('per_vggface_weight', 'vgg16_face_caffe'),
                            ('per_vgg16_lpips_weight', 'vgg16_imagenet_lpips'))
_STEP_LOSS_FIELDS = tuple(f.name for f in dataclasses.fields(objective.LossConfig) if f.name != 'perceptual')


def stage_networks(config: config_lib.RunConfig, stage: str) -> tuple:
  """The networks one stage trains: `networks_to_train` (stage 'both': the enhancer stage trains the
  texture_enhancer and the discriminator), without the discriminator when `train.train_discriminator` is off.
  """
  networks = config.networks_to_train
  if stage == 'enhancer' and config.stage == 'both':
    networks = ('texture_enhancer', 'discriminator')
  unknown = set(networks) - set(NETWORK_NAMES)
  if unknown:
    raise config_lib.ConfigError(f'config.networks_to_train: unknown network(s) {sorted(unknown)}; expected '
                                 f'names from {NETWORK_NAMES}')
  if stage == 'base' and 'texture_enhancer' in networks:
    raise config_lib.ConfigError("the texture_enhancer trains in the 'enhancer' stage (config.stage)")
  if not config.train.train_discriminator:
    networks = tuple(n for n in networks if n != 'discriminator')
  return networks


def loss_config(loss: config_lib.LossConfig) -> objective.LossConfig:
  """The step's view of the loss section: the perceptual terms as (network, weight) pairs of the nets in use."""
  perceptual_terms = tuple((net, getattr(loss, field)) for field, net in PERCEPTUAL_WEIGHT_FIELDS
                           if getattr(loss, field))
  return objective.LossConfig(perceptual=perceptual_terms, **{f: getattr(loss, f) for f in _STEP_LOSS_FIELDS})


def step_config(config: Any, stage: str) -> objective.StepConfig:
  """The static StepConfig of one stage ('base' or 'enhancer') of a run config (or its ConfigDict)."""
  config = config_lib.from_config_dict(config)
  if stage not in ('base', 'enhancer'):
    raise ValueError(f"stage {stage!r}: expected 'base' or 'enhancer'")
  networks = stage_networks(config, stage)
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if config.train.dtype not in dtypes:
    raise config_lib.ConfigError(f'config.train.dtype={config.train.dtype!r}: expected one of {sorted(dtypes)}')
  return objective.StepConfig(
      model=config.model.validate(with_enhancer=stage == 'enhancer'), stage=stage,
      networks_to_train=networks, losses=loss_config(config.loss),
      lrs=tuple((n, getattr(config.optim.lrs, n)) for n in networks), adam_beta1=config.optim.b1,
      adam_beta2=config.optim.b2, adam_eps=config.optim.eps, inf_apply_masks=config.train.inf_apply_masks,
      enh_apply_masks=config.train.enh_apply_masks, dtype=dtypes[config.train.dtype], remat=config.train.remat)


def perceptual_params(config: config_lib.RunConfig, step_cfg: objective.StepConfig) -> Dict[str, Any]:
  """Loads the frozen perceptual networks the losses use (clear error naming a missing file)."""
  params = {}
  for name, weight in step_cfg.losses.perceptual:
    if not weight:
      continue
    spec = vgg.PERCEPTUAL_NETS[name]
    if name == 'vgg16_imagenet_lpips':
      params[name] = perceptual.load_lpips_vgg16_params()
      continue
    weights_dir = config.loss.perceptual_weights_dir or os.environ.get('BILAYER_JAX_WEIGHTS', '')
    if not weights_dir:
      raise perceptual.PerceptualWeightsError(
          f'loss {name} (weight {weight}) needs {spec.file_name}: set --config.loss.perceptual_weights_dir to its '
          f'folder ({spec.how_to_get}), or turn the term off with weight 0')
    params[name] = perceptual.load_vgg_params(spec, pathlib.Path(weights_dir) / spec.file_name)
  return params


def dummy_batch(config: config_lib.RunConfig) -> Dict[str, jax.Array]:
  """Zeros shaped like one global training batch (for shapes and compilation)."""
  s, b = config.model.image_size, config.batch_size
  n, t = config.data.num_source_frames, config.data.num_target_frames

  def frames(count, channels):
    return jnp.zeros((b, count, s, s, channels))

  def poses(count):
    return jnp.zeros((b, count, config.model.pse_in_channels))

  return {'source_imgs': frames(n, 3), 'source_segs': frames(n, 1), 'source_stickmen': frames(n, 3),
          'source_poses': poses(n), 'target_imgs': frames(t, 3), 'target_segs': frames(t, 1),
          'target_stickmen': frames(t, 3), 'target_poses': poses(t)}


def merge_init_params(cfg: objective.StepConfig, state, variables: Dict[str, Any], source: str = 'init_from'):
  """Copies the networks present in imported variables into a fresh state (params and statistics)."""
  params, model_state = dict(state['params']), {k: dict(v) for k, v in state['model_state'].items()}
  gen_params = dict(params['generator'])
  for collection, tree in variables.get('generator', {}).items():
    for net, value in tree.items():
      if net not in gen_params:
        continue
      current = gen_params[net] if collection == 'params' else state['model_state']['generator'].get(
          collection, {}).get(net)
      if current is not None:
        model_io.check_shapes(current, value, f'{source}: generator/{collection}/{net}')
      if collection == 'params':
        gen_params[net] = value
      else:
        model_state['generator'].setdefault(collection, {})
        model_state['generator'][collection] = {**model_state['generator'][collection], net: value}
  params['generator'] = gen_params
  if 'discriminator' in variables:
    model_io.check_shapes(params['discriminator'], variables['discriminator']['params'],
                          f'{source}: discriminator/params')
    params['discriminator'] = variables['discriminator']['params']
    model_state['discriminator'] = {k: v for k, v in variables['discriminator'].items() if k != 'params'}
  merged = {**state, 'params': params, 'model_state': model_state}
  # Optimiser states start fresh for the (new) parameters.
  return objective.init_state(cfg, objective.model_variables(merged)) | {'step': state['step']}
