"""State dicts of the FSTH reference implementation (vincent-thevenin/Realistic-Neural-Talking-Head-Models)
<-> Flax variables of `bilayer_jax.models.fsth` (docs/fsth.md#weights).

The reference keeps spectral-norm convolutions in PyTorch's form (`weight_orig`, `weight_u`, `weight_v`,
`bias`); they map to a `kernel` (HWIO) and `bias` in `params` and `u`, `v` in `spectral`. Instance norms'
`weight` becomes `scale`. The generator's projection `p` and fine-tuning `psi`, and the discriminator's
`w_0`, `b`, `w_prime` are plain parameters; the discriminator's `W_i` (the per-video embedding matrix) is
not a module parameter here (the trainer keeps it) and is returned separately by `split_video_matrix`.
Every key is checked: a missing, unexpected or misshapen one is named in the error.
"""

import re
from typing import Any, Dict, Mapping, Tuple

import jax
import numpy as np

from bilayer_jax import errors

NETWORKS = ('embedder', 'generator', 'discriminator')
VIDEO_MATRIX_KEY = 'W_i'
# (pattern of the reference's module path, our module path) per network, first match wins.
_MODULE_RULES = {
    'embedder': ((r'resDown(\d)', r'trunk/res_down\1'), (r'self_att', 'trunk/self_att')),
    'discriminator': ((r'resDown(\d)', r'trunk/res_down\1'), (r'self_att', 'trunk/self_att'), (r'res', 'res')),
    'generator': ((r'resDown(\d)', r'res_down\1'), (r'in(\d)', r'in\1'), (r'self_att_Down', 'self_att_down'),
                  (r'self_att_Up', 'self_att_up'), (r'resUp(\d)', r'res_up\1'), (r'res(\d)', r'res\1'),
                  (r'conv2d', 'conv_out')),
}
# Our module names back to the reference's, per network (applied to the first path component).
_REFERENCE_MODULES = {
    'embedder': ((r'trunk/res_down(\d)', r'resDown\1'), (r'trunk/self_att', 'self_att')),
    'discriminator': ((r'trunk/res_down(\d)', r'resDown\1'), (r'trunk/self_att', 'self_att'), (r'res', 'res')),
    'generator': ((r'res_down(\d)', r'resDown\1'), (r'in(\d)', r'in\1'), (r'self_att_down', 'self_att_Down'),
                  (r'self_att_up', 'self_att_Up'), (r'res_up(\d)', r'resUp\1'), (r'res(\d)', r'res\1'),
                  (r'conv_out', 'conv2d')),
}
_TOP_LEVEL = {('generator', 'p'): 'projection', ('generator', 'psi'): 'psi', ('discriminator', 'w_0'): 'w0',
              ('discriminator', 'b'): 'b', ('discriminator', 'w_prime'): 'w_prime'}


class StateDictError(errors.UserError, ValueError):
  """A reference state dict does not fit the architecture; the message names the keys."""


def _module_path(network: str, module: str) -> str:
  head, _, rest = module.partition('.')
  for pattern, replacement in _MODULE_RULES[network]:
    if re.fullmatch(pattern, head):
      return '/'.join([re.sub(pattern, replacement, head)] + rest.split('.')) if rest else re.sub(
          pattern, replacement, head)
  raise KeyError(module)


def flax_location(network: str, key: str) -> Tuple[str, str]:
  """(collection, 'a/b/leaf') of a reference state-dict key."""
  if (network, key) in _TOP_LEVEL:
    return 'params', _TOP_LEVEL[(network, key)]
  module, _, leaf = key.rpartition('.')
  path = _module_path(network, module)
  if leaf in ('weight_u', 'weight_v'):
    return 'spectral', f'{path}/{leaf[-1]}'
  if leaf in ('weight_orig', 'weight'):
    is_norm = re.fullmatch(r'in\d', module) is not None  # instance norm: its weight is a scale
    return 'params', f'{path}/{"scale" if is_norm else "kernel"}'
  return 'params', f'{path}/{leaf}'


def _to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == 'kernel':
    return value.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> HWIO
  return value.reshape(-1) if leaf in ('psi', 'w0', 'w_prime') else (value.reshape(()) if leaf == 'b' else value)


def _flat(tree: Mapping[str, Any]) -> Dict[Tuple[str, str], Any]:
  out = {}
  for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [p.key for p in path]
    out[(names[0], '/'.join(names[1:]))] = value
  return out


def split_video_matrix(state_dict: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
  """(the discriminator's state dict without W_i, W_i as (videos, embedding_dim) rows)."""
  rest = {k: v for k, v in state_dict.items() if k != VIDEO_MATRIX_KEY}
  return rest, np.asarray(state_dict[VIDEO_MATRIX_KEY]).T


def variables_from_state_dict(network: str, state_dict: Mapping[str, np.ndarray], abstract: Mapping[str, Any],
                              source: str = '') -> Dict[str, Any]:
  """Flax variables of `network` shaped like `abstract` (e.g. `jax.eval_shape` of the module's init)."""
  expected = _flat(abstract)
  found, problems = {}, []
  for key, value in state_dict.items():
    if network == 'discriminator' and key == VIDEO_MATRIX_KEY:
      continue
    try:
      location = flax_location(network, key)
    except KeyError:
      problems.append(f'unexpected key {key!r}')
      continue
    if location not in expected:
      problems.append(f'unexpected key {key!r}')
      continue
    try:
      array = _to_flax(np.asarray(value, np.float32), location[1].rsplit('/', 1)[-1])
    except ValueError:  # a rank or size the layout change cannot take
      array = np.asarray(value)
    if array.shape != tuple(expected[location].shape):
      problems.append(f'key {key!r}: expected shape {_torch_shape(location, expected[location].shape)}, '
                      f'found {tuple(np.shape(value))}')
    found[location] = array
  problems += [f'missing key for {c}/{p}' for (c, p) in sorted(set(expected) - set(found))]
  if problems:
    more = f'; and {len(problems) - 8} more' if len(problems) > 8 else ''
    raise StateDictError(f'{source or network}: does not fit the FSTH {network}: ' + '; '.join(problems[:8]) + more)
  variables: Dict[str, Any] = {}
  for (collection, path), array in found.items():
    node = variables.setdefault(collection, {})
    *parents, leaf = path.split('/')
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = array
  return variables


def _torch_shape(location: Tuple[str, str], shape) -> tuple:
  leaf = location[1].rsplit('/', 1)[-1]
  if leaf == 'kernel':
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape)


def reference_key(network: str, collection: str, path: str) -> str:
  """The reference's state-dict key of one of our variables (the inverse of `flax_location`)."""
  for (net, key), ours in _TOP_LEVEL.items():
    if net == network and collection == 'params' and path == ours:
      return key
  *module, leaf = path.split('/')
  module = '/'.join(module)
  for pattern, replacement in _REFERENCE_MODULES[network]:
    match = re.match(pattern + r'(?=/|$)', module)
    if match:
      head = match.expand(replacement)
      rest = module[match.end():].lstrip('/').replace('/', '.')
      torch_module = f'{head}.{rest}' if rest else head
      break
  else:
    raise KeyError(path)
  if collection == 'spectral':
    return f'{torch_module}.weight_{leaf}'
  if leaf == 'kernel':
    return f'{torch_module}.weight' if torch_module == 'conv2d' else f'{torch_module}.weight_orig'
  return f'{torch_module}.{"weight" if leaf == "scale" else leaf}'


def _to_reference(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == 'kernel':
    return value.transpose(3, 2, 0, 1)  # HWIO -> (O, I, kh, kw)
  if leaf in ('psi', 'w0', 'w_prime'):
    return value.reshape(-1, 1)
  return value.reshape(1) if leaf == 'b' else value


def state_dict_from_variables(network: str, variables: Mapping[str, Any],
                              video_matrix: np.ndarray = None) -> Dict[str, np.ndarray]:
  """The reference's state dict of `network` from our variables; for the discriminator, `video_matrix`
  ((videos, embedding_dim) rows) becomes its `W_i` (embedding_dim, videos)."""
  state = {}
  for (collection, path), value in _flat(variables).items():
    state[reference_key(network, collection, path)] = _to_reference(np.asarray(value, np.float32),
                                                                     path.rsplit('/', 1)[-1])
  if network == 'discriminator' and video_matrix is not None:
    state[VIDEO_MATRIX_KEY] = np.asarray(video_matrix, np.float32).T
  return state


# The reference's VGGFace (`Cropped_VGG19`: the caffe-converted VGG-16 trunk) names its convolutions; their
# positions in torchvision's VGG-16 `features`, the layout of `bilayer_jax.models.vgg`.
VGGFACE_FEATURE_INDEX = {'conv1_1': 0, 'conv1_2': 2, 'conv2_1': 5, 'conv2_2': 7, 'conv3_1': 10, 'conv3_2': 12,
                         'conv3_3': 14, 'conv4_1': 17, 'conv4_2': 19, 'conv4_3': 21, 'conv5_1': 24}


def vggface_to_features_layout(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """`Cropped_VGG19` keys (conv1_1.weight, ...) -> torchvision `features.N.weight` keys (others dropped, as
  the reference's non-strict load drops them)."""
  out = {}
  for key, value in state_dict.items():
    layer, _, leaf = key.partition('.')
    if layer in VGGFACE_FEATURE_INDEX:
      out[f'features.{VGGFACE_FEATURE_INDEX[layer]}.{leaf}'] = value
  return out
