"""Mapping between Flax variables of one network and the original's PyTorch state_dict.

Flax submodule names mirror the PyTorch module path with indices attached by underscores
(`gen_tex/blocks_0/block_feats_3` <-> `gen_tex.blocks.0.block_feats.3`), so keys translate mechanically:
  params/kernel   <-> weight_orig (spectral norm) or weight    conv HWIO <-> OIHW, dense (in,out) <-> (out,in)
  params/bias     <-> bias            params/scale <-> weight (affine BN)
  params/pixel_feats, gen_tex_input, constant (LPD)   (1, S, S, C) <-> (1, C, S, S)
  params/identity_embedding (LPD, fine-tuned) <-> identity_embedding
  batch_stats/mean, var, num_batches_tracked <-> running_mean, running_var, num_batches_tracked (int64)
  spectral/u, v   <-> weight_u, weight_v (v in PyTorch's flattened (in, kh, kw) order)
Buffers the original keeps but Flax recomputes (inference_generator.identity_grid,
keypoints_embedder.frequencies) are produced by `constant_buffers`.

`state_dict_order` sorts keys the way PyTorch's `state_dict()` lists them (own parameters, own buffers,
then children in registration order), so exported files match the original's key order.
"""

import collections
import re
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import numpy as np

from bilayer_jax import errors
from bilayer_jax.models import keypoints_embedder as kp_lib
from bilayer_jax.models import warp
from bilayer_jax.models.config import BilayerConfig

COLLECTIONS = ('params', 'batch_stats', 'spectral')

_LEAF_TO_TORCH = {
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
    ('batch_stats', 'num_batches_tracked'): 'num_batches_tracked',
    ('spectral', 'u'): 'weight_u',
    ('spectral', 'v'): 'weight_v',
    ('params', 'bias'): 'bias',
    ('params', 'scale'): 'weight',
    ('params', 'pixel_feats'): 'pixel_feats',
    ('params', 'gen_tex_input'): 'gen_tex_input',
    ('params', 'constant'): 'constant',  # LPD generator's learned input
    ('params', 'identity_embedding'): 'identity_embedding',  # LPD generator, fine-tuned
}
_TORCH_TO_LEAF = {v: k for k, v in _LEAF_TO_TORCH.items()}
_NHWC_PARAMS = ('pixel_feats', 'gen_tex_input', 'constant')

# Registration order of named children in the original modules (own entries always come first).
_CHILD_ORDER = {
    'first_conv': -1, 'net': 0, 'gen_tex': 0, 'gen_inf': 0, 'prj_tex': 1, 'prj_inf': 1, 'enc': 0,
    'dec_blocks': 1, 'mlp': 0, 'blocks': 0, 'heads': 1, 'fc_blocks': 0, 'final_block': 2, 'linear': 3,
    'block_feats': 0, 'block': 1, 'skip': 2, 'conv_weight': 0, 'conv_bias': 1, 'norm_layer': 2,
}
_LEAF_ORDER = {
    'gen_tex_input': -3, 'pixel_feats': -3, 'identity_grid': -3, 'frequencies': -3, 'weight': -1,
    'bias': 0, 'weight_orig': 1, 'weight_u': 2, 'weight_v': 3, 'running_mean': 4, 'running_var': 5,
    'num_batches_tracked': 6,
}


def _module_path_to_torch(path: Iterable[str]) -> str:
  return '.'.join(re.sub(r'_(\d+)', r'.\1', part) for part in path)


def flatten(tree: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def unflatten(flat: Mapping[Tuple[str, ...], Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def _has_spectral(flat_spectral: Mapping[Tuple[str, ...], Any], module_path: Tuple[str, ...]) -> bool:
  return module_path + ('u',) in flat_spectral


def to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value)
  if name in ('weight_orig', 'weight') and value.ndim == 4:
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  if name in ('weight_orig', 'weight') and value.ndim == 2:
    return np.ascontiguousarray(value.T)
  if name in _NHWC_PARAMS:
    return np.ascontiguousarray(value.transpose(0, 3, 1, 2))
  if name == 'num_batches_tracked':
    return value.astype(np.int64)
  return value


def torch_shape(name: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
  """The PyTorch shape of a Flax variable of this shape (see `to_torch_layout`)."""
  if name in ('weight_orig', 'weight') and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if name in ('weight_orig', 'weight') and len(shape) == 2:
    return shape[::-1]
  if name in _NHWC_PARAMS:
    return (shape[0], shape[3], shape[1], shape[2])
  return shape


def from_torch_layout(name: str, value: np.ndarray, is_kernel: bool) -> np.ndarray:
  value = np.asarray(value)
  if is_kernel and value.ndim == 4:
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if is_kernel and value.ndim == 2:
    return np.ascontiguousarray(value.T)
  if name in _NHWC_PARAMS:
    return np.ascontiguousarray(value.transpose(0, 2, 3, 1))
  if name == 'num_batches_tracked':
    return value.astype(np.int32)
  return value


def key_map(variables: Mapping[str, Any]) -> Dict[str, Tuple[str, Tuple[str, ...]]]:
  """torch key -> (collection, flax path) for one network's variables {collection: tree}."""
  flat_spectral = flatten(variables.get('spectral', {}))
  mapping = {}
  for collection in COLLECTIONS:
    for path in flatten(variables.get(collection, {})):
      module, leaf = path[:-1], path[-1]
      if collection == 'params' and leaf == 'kernel':
        torch_leaf = 'weight_orig' if _has_spectral(flat_spectral, module) else 'weight'
      else:
        torch_leaf = _LEAF_TO_TORCH.get((collection, leaf))
        if torch_leaf is None:
          raise KeyError(f'no PyTorch name for {collection}/{"/".join(path)}')
      prefix = _module_path_to_torch(module)
      mapping[f'{prefix}.{torch_leaf}' if prefix else torch_leaf] = (collection, path)
  return mapping


def constant_buffers(network: str, cfg: BilayerConfig) -> Dict[str, np.ndarray]:
  """The original's non-learned buffers that Flax recomputes instead of storing."""
  if network == 'inference_generator':
    return {'identity_grid': warp.identity_grid(cfg.image_size)}
  if network == 'keypoints_embedder' and cfg.pse_use_harmonic_enc:
    return {'frequencies': kp_lib.harmonic_frequencies(cfg.pse_num_harmonics)[None, None]}
  return {}


def _sort_key(key: str) -> List[Tuple[int, float]]:
  parts = key.split('.')
  ranks = []
  for part in parts[:-1]:
    ranks.append((1, int(part) if part.isdigit() else _CHILD_ORDER.get(part, 50)))
  ranks.append((0, _LEAF_ORDER.get(parts[-1], 50)))
  return ranks


def state_dict_order(keys: Iterable[str]) -> List[str]:
  return sorted(keys, key=_sort_key)


def variables_to_state_dict(network: str, cfg: BilayerConfig,
                            variables: Mapping[str, Any]) -> 'collections.OrderedDict[str, np.ndarray]':
  """One network's Flax variables {collection: tree} -> the original's state_dict (numpy, torch layout)."""
  mapping = key_map(variables)
  flat = {c: flatten(variables.get(c, {})) for c in COLLECTIONS}
  entries = {key: to_torch_layout(key.rsplit('.', 1)[-1], flat[c][path]) for key, (c, path) in mapping.items()}
  entries.update(constant_buffers(network, cfg))
  return collections.OrderedDict((k, entries[k]) for k in state_dict_order(entries))


class CheckpointMismatchError(errors.UserError, ValueError):
  """A state_dict does not fit the network it is loaded into (names the network, keys and shapes)."""


def state_dict_to_variables(network: str, cfg: BilayerConfig, state_dict: Mapping[str, np.ndarray],
                            template: Mapping[str, Any], source: str = '') -> Dict[str, Any]:
  """The original's state_dict -> one network's Flax variables {collection: tree}.

  Args:
    network: the network's name (for messages).
    cfg: the architecture the variables are for.
    state_dict: torch key -> array (torch layout).
    template: the network's expected variables (arrays or jax.ShapeDtypeStruct), e.g. from eval_shape.
    source: file name for error messages.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected or wrongly shaped key.
  """
  where = f'{network} ({source})' if source else network
  mapping = key_map(template)
  flat_template = {c: flatten(template.get(c, {})) for c in COLLECTIONS}
  constants = constant_buffers(network, cfg)
  problems = []
  for key in state_dict:
    if key not in mapping and key not in constants:
      problems.append(f'unexpected key {key!r} {tuple(np.shape(state_dict[key]))}')
  flat_out = {c: {} for c in COLLECTIONS}
  for key, (collection, path) in mapping.items():
    if key not in state_dict:
      problems.append(f'missing key {key!r}')
      continue
    expected = torch_shape(key.rsplit('.', 1)[-1], tuple(flat_template[collection][path].shape))
    found = tuple(np.shape(state_dict[key]))
    if expected != found:
      problems.append(f'key {key!r}: expected shape {expected}, found {found}')
      continue
    flat_out[collection][path] = from_torch_layout(path[-1], state_dict[key], path[-1] == 'kernel')
  for key, value in constants.items():
    if key not in state_dict:
      problems.append(f'missing buffer {key!r}')
    elif np.shape(state_dict[key]) != value.shape:
      problems.append(f'buffer {key!r}: expected shape {value.shape}, found {tuple(np.shape(state_dict[key]))}')
    elif not np.allclose(state_dict[key], value, rtol=0, atol=1e-6):
      problems.append(f'buffer {key!r} differs from the value this architecture computes')
  if problems:
    shown = '\n  '.join(problems[:40])
    more = f'\n  ... and {len(problems) - 40} more' if len(problems) > 40 else ''
    raise CheckpointMismatchError(f'{where}: checkpoint does not match the configured network:\n  {shown}{more}')
  return {c: unflatten(flat_out[c]) for c in COLLECTIONS if flat_out[c]}
