"""Config (ml_collections) -> the static pieces a training run needs: StepConfig, perceptual weights."""

import os
import pathlib
from typing import Any, Dict

import jax.numpy as jnp
import ml_collections

from bilayer_jax.models import vgg
from bilayer_jax.models.config import BilayerConfig, NETWORK_NAMES
from bilayer_jax.train import config_checks
from bilayer_jax.train import step as step_lib

def model_config(config: ml_collections.ConfigDict) -> BilayerConfig:
  fields = dict(config.model.to_dict())
  fields['spn_networks'] = config_checks.names(fields['spn_networks'])
  return BilayerConfig(**fields)


def step_config(config: ml_collections.ConfigDict, stage: str) -> step_lib.StepConfig:
  """The static StepConfig of one stage ('base' or 'enhancer')."""
  if stage not in ('base', 'enhancer'):
    raise ValueError(f"stage {stage!r}: expected 'base' or 'enhancer'")
  networks = config_checks.names(config.networks_to_train)
  if stage == 'enhancer' and config.stage == 'both':
    networks = ('texture_enhancer', 'discriminator')
  unknown = set(networks) - set(NETWORK_NAMES)
  if unknown:
    raise ValueError(f'networks_to_train: unknown network(s) {sorted(unknown)}; expected names from {NETWORK_NAMES}')
  if stage == 'base' and 'texture_enhancer' in networks:
    raise ValueError("the texture_enhancer trains in the 'enhancer' stage (config.stage)")
  if not config.train.train_discriminator:
    networks = tuple(n for n in networks if n != 'discriminator')
  lc = config.loss
  losses = step_lib.LossConfig(
      adv_pred_type=lc.adv_pred_type, adv_loss_weight=lc.adv_loss_weight, fem_loss_type=lc.fem_loss_type,
      fem_loss_weight=lc.fem_loss_weight,
      perceptual=(('vgg19_imagenet_pytorch', lc.per_vgg19_weight), ('vgg16_face_caffe', lc.per_vggface_weight),
                  ('vgg16_imagenet_lpips', lc.per_vgg16_lpips_weight)),
      per_layer_weights=tuple(float(w) for w in config_checks.names(lc.per_layer_weights)),
      pix_loss_type=lc.pix_loss_type, pix_loss_weight=lc.pix_loss_weight, seg_loss_weight=lc.seg_loss_weight,
      wpr_loss_weight=lc.wpr_loss_weight, wpr_loss_weight_decay=lc.wpr_loss_weight_decay,
      wpr_loss_decay_schedule=lc.wpr_loss_decay_schedule)
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if config.train.dtype not in dtypes:
    raise ValueError(f'train.dtype {config.train.dtype!r}: expected one of {sorted(dtypes)}')
  return step_lib.StepConfig(
      model=model_config(config).validate(with_enhancer=stage == 'enhancer'), stage=stage,
      networks_to_train=networks, losses=losses,
      lrs=tuple((n, float(config.optim.lrs[n])) for n in networks), adam_beta1=config.optim.b1,
      adam_beta2=config.optim.b2, adam_eps=config.optim.eps, inf_apply_masks=config.train.inf_apply_masks,
      enh_apply_masks=config.train.enh_apply_masks, dtype=dtypes[config.train.dtype])


def perceptual_params(config: ml_collections.ConfigDict, step_cfg: step_lib.StepConfig) -> Dict[str, Any]:
  """Loads the frozen perceptual networks the losses use (clear error naming a missing file)."""
  params = {}
  for name, weight in step_cfg.losses.perceptual:
    if not weight:
      continue
    spec = vgg.PERCEPTUAL_NETS[name]
    if name == 'vgg16_imagenet_lpips':
      params[name] = vgg.load_lpips_vgg16_params()
      continue
    weights_dir = config.loss.perceptual_weights_dir or os.environ.get('BILAYER_JAX_WEIGHTS', '')
    if not weights_dir:
      raise vgg.PerceptualWeightsError(
          f'loss {name} (weight {weight}) needs {spec.file_name}: set --config.loss.perceptual_weights_dir to its '
          f'folder ({spec.how_to_get}), or turn the term off with weight 0')
    params[name] = vgg.load_vgg_params(spec, pathlib.Path(weights_dir) / spec.file_name)
  return params
