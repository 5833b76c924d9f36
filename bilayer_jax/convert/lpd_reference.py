"""State dicts of the official LPD code (shrubb/latent-pose-reenactment) <-> Flax variables of
`bilayer_jax.models.lpd` (docs/lpd.md#weights).

Our module names mirror the official module paths, so keys translate by `torch_names`' rule (convolutions
OIHW <-> HWIO, linear (out, in) <-> (in, out), spectral norm `weight_orig`/`weight_u`/`weight_v` <->
`kernel` + `spectral/u, v`, BatchNorm `weight`/`running_*` <-> `scale`/`batch_stats`, the generator's
`constant` NCHW <-> NHWC). The discriminator's per-video table `embed.weight_orig` (and its u, v) is not a
module parameter here: the trainer keeps it (sharded by rows), so it is split off into `EmbeddingTable`
variables. Every key and shape is checked; errors name them.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.convert import torch_names
from bilayer_jax.models.lpd import networks
from bilayer_jax.models.lpd.config import LPDConfig

NETWORKS = ('embedder', 'generator', 'discriminator')
TABLE_PREFIX = 'embed.'
_TABLE_KEYS = {'weight_orig': ('params', 'embedding'), 'weight_u': ('spectral', 'u'), 'weight_v': ('spectral', 'v')}


def module(network: str, cfg: LPDConfig, finetuned: bool = False):
  if network == 'embedder':
    return networks.Embedder(cfg)
  if network == 'generator':
    return networks.Generator(cfg, finetuned=finetuned)
  if network == 'discriminator':
    return networks.Discriminator(cfg)
  raise ValueError(f'unknown LPD network {network!r}: expected one of {", ".join(NETWORKS)}')


def abstract_variables(network: str, cfg: LPDConfig, finetuned: bool = False) -> Dict[str, Any]:
  """Shapes of one network's variables (no computation)."""
  net, size = module(network, cfg, finetuned), cfg.image_size
  image = jnp.zeros((1, size, size, 3))
  if network == 'embedder':
    args = (image[:, None], image)
  elif network == 'generator':
    args = (jnp.zeros((1, cfg.identity_dim)), jnp.zeros((1, cfg.pose_dim)))
  else:
    args = (image, jnp.zeros((1, cfg.identity_dim)))
  return jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), *args))


def split_table(state_dict: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], Optional[Dict[str, Any]]]:
  """(the discriminator's state dict without `embed.*`, the table's variables or None)."""
  rest = {k: v for k, v in state_dict.items() if not k.startswith(TABLE_PREFIX)}
  table = {}
  for key, value in state_dict.items():
    if key.startswith(TABLE_PREFIX):
      leaf = key[len(TABLE_PREFIX):]
      if leaf not in _TABLE_KEYS:
        raise torch_names.CheckpointMismatchError(f'discriminator: unexpected key {key!r}')
      collection, name = _TABLE_KEYS[leaf]
      table.setdefault(collection, {})[name] = np.asarray(value, np.float32)
  if table and set(table) != {'params', 'spectral'}:
    raise torch_names.CheckpointMismatchError(
        f'discriminator: the projection table needs {", ".join(TABLE_PREFIX + k for k in _TABLE_KEYS)}')
  return rest, table or None


def variables_from_state_dict(network: str, cfg: LPDConfig, state_dict: Mapping[str, np.ndarray],
                              finetuned: bool = False, source: str = '') -> Dict[str, Any]:
  """One network's Flax variables {collection: tree} (the discriminator's without its table)."""
  if network == 'discriminator':
    state_dict, _ = split_table(state_dict)
  template = abstract_variables(network, cfg, finetuned)
  return torch_names.state_dict_to_variables(network, cfg, state_dict, template, source)


def state_dict_from_variables(network: str, cfg: LPDConfig, variables: Mapping[str, Any],
                              table: Optional[Mapping[str, Any]] = None) -> Dict[str, np.ndarray]:
  """The official state dict of one network; `table` (EmbeddingTable variables) adds `embed.*`."""
  state = dict(torch_names.variables_to_state_dict(network, cfg, variables))
  if table is not None:
    for leaf, (collection, name) in _TABLE_KEYS.items():
      state[TABLE_PREFIX + leaf] = np.asarray(table[collection][name], np.float32)
  return state
