"""LPD meta-learning on the shared trainer: the training state, its initialisation and the sharded step.

State (the trainer's contract, bilayer_jax/families/base.py):

    {'step',
     'params':      {'generator': {'embedder': ..., 'generator': ...}, 'discriminator': ...},
     'model_state': {'generator': {'batch_stats': {'embedder': ...}, 'spectral': {'generator': ...}},
                     'discriminator': {'spectral': ..., 'table_v': (C,)}},
     'opt_state':   {'embedder', 'generator', 'discriminator': each network's optimiser state},
     'ema':         {'params': {'embedder', 'generator'}, 'batch_stats': ..., 'spectral': ...},
     'video_table': {'embedding': (V, C), 'u': (V,), 'opt': the table's optimiser state}}

`video_table` is the discriminator's per-video projection table (one row per example of the training split)
with its spectral-norm vector u and its Adam moments, sharded by rows over the mesh (`ROW_SHARDED`). Unlike
FSTH's rows, the whole table moves every step: it is spectrally normalised as one matrix, so every row has a
gradient through sigma (docs/lpd.md#the-projection-table). `ema` is the running average of the embedder and
generator that the official code renders with; `model_variables` returns it as the generator side, so the
periodic evaluation and the params directory use it.
"""

from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.families.lpd import objective
from bilayer_jax.models.lpd import networks

Array = jax.Array
NETWORKS = ('embedder', 'generator', 'discriminator')
GENERATOR_SIDE = ('embedder', 'generator')
ROW_SHARDED = ('video_table',)


def _to_unit(x: Array) -> Array:
  """The pipeline's [-1, 1] images -> the official [0, 1]."""
  return (x + 1) / 2


def episode(batch: Mapping[str, Array]) -> Dict[str, Array]:
  """A pipeline batch as `objective.forward` takes it: the K source frames give the identity, the target
  frame (augmented: 'pose_imgs' when the pipeline adds it) the pose, and the target masked by its
  segmentation is what the generator must render."""
  target, mask = _to_unit(batch['target_imgs'][:, 0]), batch['target_segs'][:, 0]
  pose = _to_unit(batch['pose_imgs'][:, 0]) if 'pose_imgs' in batch else target
  return {'identity_frames': _to_unit(batch['source_imgs']), 'pose_frames': pose, 'target': target * mask,
          'target_mask': mask, 'labels': batch['video_index']}


def _per_network_shapes(m, size: int):
  key = jax.random.PRNGKey(0)  # only traced
  image = jnp.zeros((1, size, size, 3))
  return {'embedder': jax.eval_shape(lambda: networks.Embedder(m).init(key, image[:, None], image)),
          'generator': jax.eval_shape(lambda: networks.Generator(m).init(
              key, jnp.zeros((1, m.identity_dim)), jnp.zeros((1, m.pose_dim)))),
          'discriminator': jax.eval_shape(lambda: networks.Discriminator(m).init(
              key, image, jnp.zeros((1, m.identity_dim))))}


def variable_shapes(cfg: objective.StepConfig, batch: Mapping[str, Array]) -> Dict[str, Any]:
  """Shapes of {'generator': {collection: {network: ...}}, 'discriminator': ..., 'table': ...}."""
  m = cfg.model
  shapes = _by_collection(_per_network_shapes(m, batch['source_imgs'].shape[2]))
  table = jax.eval_shape(lambda: networks.EmbeddingTable(cfg.num_video_rows, m.identity_dim).init(
      jax.random.PRNGKey(0), jnp.zeros((1,), jnp.int32)))
  return {**shapes, 'table': table}


def _generator_side(per_network: Mapping[str, Any]) -> Dict[str, Any]:
  """{network: {collection: tree}} -> {collection: {network: tree}} of the embedder and generator."""
  generator: Dict[str, Dict[str, Any]] = {}
  for net in GENERATOR_SIDE:
    for collection, tree in per_network[net].items():
      generator.setdefault(collection, {})[net] = tree
  return generator


def _by_collection(per_network: Mapping[str, Any]) -> Dict[str, Any]:
  """{network: {collection: tree}} -> {'generator': {collection: {network: tree}}, 'discriminator': ...}."""
  return {'generator': _generator_side(per_network), 'discriminator': dict(per_network['discriminator'])}


def _by_network(generator_side: Mapping[str, Any]) -> Dict[str, Any]:
  """The generator side {collection: {network: tree}} -> {network: {collection: tree}}."""
  per_network = {net: {} for net in GENERATOR_SIDE}
  for collection, trees in generator_side.items():
    for net, tree in trees.items():
      per_network[net][collection] = tree
  return per_network


def init_variables(cfg: objective.StepConfig, seed: int, shapes: Mapping[str, Any]) -> Dict[str, Any]:
  """Fresh variables from `seed`, made on the host CPU with the networks' own initialisers (torchvision's
  for the encoders, PyTorch's defaults elsewhere; the table U(±0.1))."""
  del shapes  # the modules know their shapes
  m = cfg.model
  image = np.zeros((1, m.image_size, m.image_size, 3), np.float32)
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  with jax.default_device(jax.devices('cpu')[0]):
    per_network = {
        'embedder': networks.Embedder(m).init(keys[0], image[:, None], image),
        'generator': networks.Generator(m).init(keys[1], np.zeros((1, m.identity_dim), np.float32),
                                                np.zeros((1, m.pose_dim), np.float32)),
        'discriminator': networks.Discriminator(m).init(keys[2], image, np.zeros((1, m.identity_dim), np.float32))}
    table = networks.EmbeddingTable(cfg.num_video_rows, m.identity_dim).init(keys[3], np.zeros((1,), np.int32))
  return jax.device_get({**_by_collection(per_network), 'table': table})


def _opt_states(cfg: objective.StepConfig, params: Mapping[str, Any]) -> Dict[str, Any]:
  return objective.init_opt_state(cfg, params)


def _pack(step: Array, per_network: Mapping[str, Any], ema: Mapping[str, Any], opt_state: Mapping[str, Any],
          table: Mapping[str, Any]) -> Dict[str, Any]:
  """Per-network variables (+ the table's {'params', 'spectral'}) -> the trainer's state."""
  generator = _generator_side(per_network)
  split = lambda tree: {k: v for k, v in tree.items() if k != 'params'}
  return {'step': step,
          'params': {'generator': generator['params'], 'discriminator': per_network['discriminator']['params']},
          'model_state': {'generator': split(generator),
                          'discriminator': {**split(per_network['discriminator']),
                                            'table_v': table['spectral']['v']}},
          'opt_state': {net: opt_state[net] for net in NETWORKS},
          'ema': _generator_side(ema),
          'video_table': {'embedding': table['params']['embedding'], 'u': table['spectral']['u'],
                          'opt': opt_state['table']}}


def init_state(cfg: objective.StepConfig, variables: Mapping[str, Any]) -> Dict[str, Any]:
  """The training state of fresh variables: fresh optimiser states, the EMA starting at the weights."""
  per_network = {**_by_network(variables['generator']), 'discriminator': variables['discriminator']}
  params = {net: per_network[net]['params'] for net in NETWORKS}
  params['table'] = variables['table']['params']
  ema = {net: per_network[net] for net in GENERATOR_SIDE}
  return _pack(jnp.zeros((), jnp.int32), per_network, ema, _opt_states(cfg, params), variables['table'])


def model_variables(state: Mapping[str, Any]) -> Dict[str, Any]:
  """{'generator': the EMA embedder + generator (what the official code renders with), 'discriminator'}."""
  discriminator = {k: v for k, v in state['model_state']['discriminator'].items() if k != 'table_v'}
  return {'generator': state['ema'],
          'discriminator': {'params': state['params']['discriminator'], **discriminator}}


def _unpack(state: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """The trainer's state -> (params, other collections) per network as `objective.iteration` takes them."""
  generator = {'params': state['params']['generator'], **state['model_state']['generator']}
  per_network = _by_network(generator)
  d_state = state['model_state']['discriminator']
  per_network['discriminator'] = {'params': state['params']['discriminator'],
                                  **{k: v for k, v in d_state.items() if k != 'table_v'}}
  params = {net: per_network[net]['params'] for net in NETWORKS}
  params['table'] = {'embedding': state['video_table']['embedding']}
  others = {net: {k: v for k, v in per_network[net].items() if k != 'params'} for net in NETWORKS}
  others['table'] = {'spectral': {'u': state['video_table']['u'], 'v': d_state['table_v']}}
  return params, others


def _global_norm(tree) -> Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def train_step(cfg: objective.StepConfig, state: Mapping[str, Any], batch: Mapping[str, Array],
               perceptual: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Array]]:
  """One meta-learning iteration (objective.iteration) on the trainer's state; returns (state, metrics).
  The pose encoder's dropout draws from the step number (and the run's seed)."""
  params, others = _unpack(state)
  ema = _by_network(state['ema'])
  opt_state = {**state['opt_state'], 'table': state['video_table']['opt']}
  rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), state['step'])
  params, others, ema, opt_state, out = objective.iteration(cfg, params, others, ema, opt_state, perceptual,
                                                            episode(batch), rng=rng)
  per_network = {net: {'params': params[net], **others[net]} for net in NETWORKS}
  table = {'params': params['table'], **others['table']}
  new_state = _pack(state['step'] + 1, per_network, ema, opt_state, table)
  metrics = {f'loss/{name}': value for name, value in out.items() if name not in ('outputs', 'grads')}
  metrics['scores/fake'] = out['outputs']['fake_score_g'].mean()
  metrics['scores/real'] = out['outputs']['real_score'].mean()
  for net, grads in out['grads'].items():
    metrics[f'grad_norm/{net}'] = _global_norm(grads)
  for net, side in objective.trained_networks(cfg).items():
    metrics[f'lr/{net}'] = jnp.asarray(cfg.generator_lr if side == 'generator' else cfg.discriminator_lr,
                                       jnp.float32)
  return new_state, metrics
