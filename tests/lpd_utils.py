"""Shared helpers of the LPD parity tests: the fixtures' small configuration, their weights as our variables,
their inputs as our batch, our variables back under the reference's keys."""

import dataclasses
import pathlib
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from bilayer_jax.convert import lpd_reference
from bilayer_jax.convert import perceptual as perceptual_lib
from bilayer_jax.families.lpd import objective
from bilayer_jax.models import vgg
from bilayer_jax.models.lpd.config import LPDConfig

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'lpd_small'
# generate.py's small configuration (README §1): torchvision encoders at 1/8 width, MobileNetV2 x0.25.
CFG = LPDConfig(image_size=64, identity_dim=32, pose_dim=16, num_channels=4, max_num_channels=32, resnext_stem=8,
                resnext_planes=(8, 16, 32, 64), resnext_groups=4, resnext_width_per_group=32,
                mobilenet_width=0.25).validate()
VGG19 = dataclasses.replace(vgg.LPD_VGG19, width_divisor=8)
VGGFACE = dataclasses.replace(vgg.LPD_VGGFACE, width_divisor=8)
STEP_CFG = objective.StepConfig(model=CFG, vgg19=VGG19, vggface=VGGFACE)


def load(name: str) -> Dict[str, np.ndarray]:
  with np.load(FIXTURES / name) as data:
    return dict(data)


def nhwc(x) -> np.ndarray:
  x = np.asarray(x)
  return np.moveaxis(x, -3, -1)


def nchw(x) -> np.ndarray:
  return np.moveaxis(np.asarray(x), -1, -3)


def state_dict(weights: Mapping[str, np.ndarray], network: str, prefix: str = '') -> Dict[str, np.ndarray]:
  head = f'{prefix}{network}/'
  return {k[len(head):]: v for k, v in weights.items() if k.startswith(head)}


def variables(weights: Mapping[str, np.ndarray], prefix: str = '',
              finetuned: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(params, other collections) per network ('embedder', 'generator', 'discriminator', 'table')."""
  out = {}
  for network in lpd_reference.NETWORKS:
    state = state_dict(weights, network, prefix)
    out[network] = lpd_reference.variables_from_state_dict(network, CFG, state,
                                                           finetuned and network == 'generator')
    if network == 'discriminator':
      out['table'] = lpd_reference.split_table(state)[1]
  params = {net: v['params'] for net, v in out.items()}
  return params, {net: {c: x for c, x in v.items() if c != 'params'} for net, v in out.items()}


def batch(inputs: Mapping[str, np.ndarray], label=None) -> Dict[str, np.ndarray]:
  return {'identity_frames': nhwc(inputs['enc_rgbs']), 'pose_frames': nhwc(inputs['pose_input_rgbs'][:, 0]),
          'target': nhwc(inputs['target_rgbs'][:, 0]), 'target_mask': nhwc(inputs['real_segm'][:, 0, :1]),
          'labels': np.asarray(inputs['label'] if label is None else label)}


def perceptual(weights: Mapping[str, np.ndarray]) -> Dict[str, Any]:
  face = {f'features.{k}': v for k, v in state_dict(weights, 'vggface').items()}
  return {VGG19.name: perceptual_lib.vgg_params_from_state_dict(VGG19, state_dict(weights, 'vgg19')),
          VGGFACE.name: perceptual_lib.vgg_params_from_state_dict(VGGFACE, face)}


def torch_buffers(params: Mapping[str, Any], state: Mapping[str, Any], finetuned: bool = False,
                  with_params: bool = False) -> Dict[str, np.ndarray]:
  """Our variables under '<network>/<reference key>' (non-parameter ones unless `with_params`)."""
  out = {}
  for network in lpd_reference.NETWORKS:
    variables = {**state[network], 'params': params[network]}
    table = {**state['table'], 'params': params['table']} if network == 'discriminator' else None
    for key, value in lpd_reference.state_dict_from_variables(network, CFG, variables, table).items():
      out[f'{network}/{key}'] = value
  if not with_params:
    buffer_leaves = ('running_mean', 'running_var', 'num_batches_tracked', 'weight_u', 'weight_v')
    out = {k: v for k, v in out.items() if k.rsplit('.', 1)[-1] in buffer_leaves}
  return out
