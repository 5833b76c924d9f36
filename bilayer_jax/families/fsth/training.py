"""FSTH meta-learning on the shared trainer: the training state, its initialisation and the sharded step.

State (the trainer's contract, bilayer_jax/families/base.py):

    {'step',
     'params':      {'generator': {'embedder': ..., 'generator': ...}, 'discriminator': ...},
     'model_state': {'generator': {'spectral': {'embedder': ..., 'generator': ...}},
                     'discriminator': {'spectral': ...}},
     'opt_state':   {'generator': Adam of both generator-side networks, 'discriminator': Adam},
     'video_table': {'rows': (V, C), 'mu', 'nu': (V, C), 'count': (V,)}}

`video_table` is the discriminator's per-video embedding matrix W (one row per example of the training
split) with each row's own Adam moments. It is sharded by rows over the mesh whatever `mesh.fsdp` says
(`ROW_SHARDED`): at VoxCeleb2's ~150k videos and C = 512 it holds 0.9 GB, split over the devices. A step
gathers the batch's rows, updates them with the discriminator and scatters them back: only those rows
change (docs/fsth.md#the-per-video-matrix). The params directory written at the end of a run holds the
networks, not the table (it belongs to the training split; a checkpoint keeps it for resuming).
"""

from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.families.fsth import objective
from bilayer_jax.models.fsth import networks

Array = jax.Array
NETWORKS = ('embedder', 'generator', 'discriminator')
GENERATOR_SIDE = ('embedder', 'generator')
# Top-level state entries sharded along their first axis over the mesh (sharding.state_shardings).
ROW_SHARDED = ('video_table',)


def _to_unit(x: Array) -> Array:
  """The pipeline's [-1, 1] images -> the reference's [0, 1]."""
  return (x + 1) / 2


def episode(cfg: objective.MetaStepConfig, batch: Mapping[str, Array]) -> Dict[str, Array]:
  """A pipeline batch as `objective.generator_loss` takes it: the K source frames and their landmark
  images, and the target (the first source frame, a uniformly random one of the K, as the reference draws
  it; or the pipeline's separate target frame with `target_in_sources=False`, as the paper)."""
  frames, landmarks = _to_unit(batch['source_imgs']), _to_unit(batch['source_stickmen'])
  if cfg.target_in_sources:
    target, target_landmarks = frames[:, 0], landmarks[:, 0]
  else:
    target, target_landmarks = _to_unit(batch['target_imgs'][:, 0]), _to_unit(batch['target_stickmen'][:, 0])
  return {'frames': frames, 'landmarks': landmarks, 'target_frame': target, 'target_landmarks': target_landmarks}


def variable_shapes(cfg: objective.MetaStepConfig, batch: Mapping[str, Array]) -> Dict[str, Any]:
  """Shapes of {'generator': {collection: {network: ...}}, 'discriminator': ..., 'video_rows'}."""
  m, key = cfg.model, jax.random.PRNGKey(0)  # only traced
  image = batch['source_imgs'][:, 0]
  rows = jnp.zeros((image.shape[0], m.embedding_dim))
  shapes = {'embedder': jax.eval_shape(lambda: networks.Embedder(m).init(key, image, image)),
            'generator': jax.eval_shape(lambda: networks.Generator(m).init(key, image, rows)),
            'discriminator': jax.eval_shape(lambda: networks.Discriminator(m).init(key, image, image, rows))}
  return {**_by_collection(shapes),
          'video_rows': jax.ShapeDtypeStruct((cfg.num_video_rows, m.embedding_dim), jnp.float32)}


def _by_collection(per_network: Mapping[str, Any]) -> Dict[str, Any]:
  """{network: {collection: tree}} -> {'generator': {collection: {network: tree}}, 'discriminator': ...}."""
  generator: Dict[str, Dict[str, Any]] = {}
  for net in GENERATOR_SIDE:
    for collection, tree in per_network[net].items():
      generator.setdefault(collection, {})[net] = tree
  return {'generator': generator, 'discriminator': dict(per_network['discriminator'])}


def _by_network(variables: Mapping[str, Any]) -> Dict[str, Any]:
  """The inverse of `_by_collection`."""
  per_network = {net: {} for net in GENERATOR_SIDE}
  for collection, trees in variables['generator'].items():
    for net, tree in trees.items():
      per_network[net][collection] = tree
  return {**per_network, 'discriminator': dict(variables['discriminator'])}


def init_variables(cfg: objective.MetaStepConfig, seed: int, shapes: Mapping[str, Any]) -> Dict[str, Any]:
  """Fresh variables from `seed`, made on the host CPU: the networks' own initialisers (xavier-uniform
  convolutions as the reference's init_weights) and per-video rows uniform in [0, 1) (the reference's
  torch.rand for a video without a stored row)."""
  del shapes  # the modules know their shapes
  m = cfg.model
  size = m.image_size
  image = np.zeros((1, size, size, 3), np.float32)
  rows = np.zeros((1, m.embedding_dim), np.float32)
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  with jax.default_device(jax.devices('cpu')[0]):
    per_network = {'embedder': networks.Embedder(m).init(keys[0], image, image),
                   'generator': networks.Generator(m).init(keys[1], image, rows),
                   'discriminator': networks.Discriminator(m).init(keys[2], image, image, rows)}
    video_rows = jax.random.uniform(keys[3], (cfg.num_video_rows, m.embedding_dim))
  return jax.device_get({**_by_collection(per_network), 'video_rows': video_rows})


def _state(step: Array, variables: Mapping[str, Any], opt_generator, opt_discriminator, video_table):
  split = lambda side: {k: v for k, v in variables[side].items() if k != 'params'}
  return {'step': step,
          'params': {'generator': variables['generator']['params'],
                     'discriminator': variables['discriminator']['params']},
          'model_state': {'generator': split('generator'), 'discriminator': split('discriminator')},
          'opt_state': {'generator': opt_generator, 'discriminator': opt_discriminator},
          'video_table': video_table}


def init_state(cfg: objective.MetaStepConfig, variables: Mapping[str, Any]) -> Dict[str, Any]:
  """The training state of fresh variables (fresh Adam states; rows from `variables['video_rows']`)."""
  rows = variables['video_rows']
  opt_generator = objective.adam(cfg, cfg.generator_lr).init(variables['generator']['params'])
  opt_discriminator = objective.adam(cfg, cfg.discriminator_lr).init(variables['discriminator']['params'])
  return _state(jnp.zeros((), jnp.int32), variables, opt_generator, opt_discriminator,
                {'rows': rows, **objective.init_row_moments(rows)})


def model_variables(state: Mapping[str, Any]) -> Dict[str, Any]:
  """{'generator': {'params': {embedder, generator}, 'spectral': ...}, 'discriminator': {...}}."""
  return {'generator': {'params': state['params']['generator'], **state['model_state']['generator']},
          'discriminator': {'params': state['params']['discriminator'], **state['model_state']['discriminator']}}


def _gather_rows(cfg: objective.MetaStepConfig, table: Mapping[str, Array], index: Array):
  rows = table['rows'][index]
  if cfg.reload_rows_through_leaky_relu:
    rows = jax.nn.leaky_relu(rows, cfg.model.leaky_slope)
  return rows, {k: table[k][index] for k in ('mu', 'nu', 'count')}


def _scatter_rows(table: Mapping[str, Array], index: Array, rows: Array, moments: Mapping[str, Array]):
  """The table with the batch's rows replaced (a video twice in a batch: one slot's update is kept, as the
  reference stores each slot's row in turn)."""
  updated = {'rows': rows, **moments}
  return {k: jnp.asarray(table[k]).at[index].set(updated[k], mode='drop') for k in table}


def _global_norm(tree) -> Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def train_step(cfg: objective.MetaStepConfig, state: Mapping[str, Any], batch: Mapping[str, Array],
               perceptual: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Array]]:
  """One meta-learning iteration (objective.meta_iteration) on the trainer's state; returns (state, metrics)."""
  index = batch['video_index']
  rows, row_moments = _gather_rows(cfg, state['video_table'], index)
  per_network = _by_network(model_variables(state))
  opt_state = {'generator': state['opt_state']['generator'],
               'discriminator': {'net': state['opt_state']['discriminator'], 'rows': row_moments}}
  new_vars, rows, opt_state, out = objective.meta_iteration(cfg, per_network, rows, opt_state, perceptual,
                                                            episode(cfg, batch))
  new_state = _state(state['step'] + 1, _by_collection(new_vars), opt_state['generator'],
                     opt_state['discriminator']['net'],
                     _scatter_rows(state['video_table'], index, rows, opt_state['discriminator']['rows']))
  metrics = {'loss/total': out['loss_g'], 'loss/content': out['loss_cnt'], 'loss/adversarial': out['loss_adv'],
             'loss/match': out['loss_match'], 'scores/fake': out['r_hat'].mean()}
  for update in range(1, cfg.discriminator_updates + 1):
    metrics[f'loss/D_hinge{update}'] = out[f'loss_d{update}']
  for net in GENERATOR_SIDE:
    metrics[f'grad_norm/{net}'] = _global_norm(out['grad_g'][net])
  if cfg.discriminator_updates:
    metrics['grad_norm/discriminator'] = _global_norm(out['grad_d']['net'])
  for net, lr in (('embedder', cfg.generator_lr), ('generator', cfg.generator_lr),
                  ('discriminator', cfg.discriminator_lr)):
    metrics[f'lr/{net}'] = jnp.asarray(lr, jnp.float32)
  return new_state, metrics
