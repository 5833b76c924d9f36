"""LPD fine-tuning on one person (docs/lpd.md#training), as `bilayer_jax.finetune` runs it.

As the official fine-tuning (configs/finetuning-base.yaml): the person's identity vector is the mean
identity-encoder output over their frames (the params directory's EMA embedder, eval mode); it initialises
the generator's trainable `identity_embedding` and replaces the discriminator's projection table by that one
row (`objective.finetune_init`). Each iteration (`objective.iteration`, stage 'finetune') trains the
generator with its identity vector and the discriminator + row with the official RAdam on a batch of the
person's frames: each sample is one frame, its pose frame augmented as at meta-learning (`pose_augment`, the
run's augment_* switches; a shift moves the target and its mask too), the target the frame times its
segmentation, label 0. The embedder is not optimised but runs in train mode (its pose-encoder BatchNorm
statistics move, and the EMA copies them); the embedder and generator have an EMA (decay 0.972).

Differences from the official code: its generator fine-tunes from the non-EMA meta-learned weights (its EMA
fails to load them); a params directory holds only the EMA, so ours starts from those. Its data loader
shuffles the frames in epochs (drop_last); ours draws each batch's distinct frames at random per step.
"""

import dataclasses
from typing import Any, Dict, Mapping, Sequence, Tuple

import jax
import numpy as np
import tensorflow as tf

from bilayer_jax import config as config_lib
from bilayer_jax.families.lpd import objective
from bilayer_jax.families.lpd import setup
from bilayer_jax.inference import lpd_animator
from bilayer_jax.inference import preprocess

MAX_BATCH_SIZE = 8  # the official README: batch min(N, 8)
GENERATOR_SIDE = ('embedder', 'generator')


def _split(variables: Mapping[str, Any]) -> Tuple[Any, Dict[str, Any]]:
  """A network's variables -> (params, the other collections)."""
  return variables['params'], {k: v for k, v in variables.items() if k != 'params'}


class Finetuner:
  """One person's fine-tuning: the starting state, the jitted step, the batch of each step and the
  variables of the params directory (the interface `bilayer_jax.finetune` drives).

  The checkpointed state holds the trained networks (generator, discriminator, table), every network's
  other collections, the generator's EMA and the optimiser states; the embedder's weights stay outside it
  (they never change, and its EMA equals them).

  Args:
    cfg_model: the architecture. variables: the meta-trained params directory's variables.
    config: the meta-learning run's config (loss weights, augmentations, fine-tuning optimisers).
    sources: the person's frames. settings: `bilayer_jax.finetune.Settings` (seed, batch_size).
  """

  def __init__(self, cfg_model, variables: Mapping[str, Any], config: config_lib.RunConfig,
               sources: Sequence[preprocess.SourceInputs], settings: Any):
    self.variables = variables
    self.settings = settings
    self.cfg = setup.finetune_config(dataclasses.replace(config, model=cfg_model))
    self.frames = np.concatenate([s.imgs[0] for s in sources]).astype(np.float32)  # [-1, 1]
    self.masks = np.concatenate([s.segs[0] for s in sources]).astype(np.float32)
    self.batch_size = settings.batch_size or min(len(self.frames), MAX_BATCH_SIZE)
    self.embedder = jax.device_put(lpd_animator.network_variables(variables['generator'], 'embedder'))
    augment = setup.pose_augmentation(config, training_split=True)
    self._augment = tf.function(lambda imgs, segs, seed: augment({'target_imgs': imgs, 'target_segs': segs}, seed))
    perceptual = jax.device_put(setup.perceptual_params(config, self.cfg))
    self._step_fn = _step_fn(self.cfg, perceptual, settings.seed)

  def identity(self) -> jax.Array:
    """(1, identity_dim): the mean identity vector of the person's frames (EMA embedder, eval mode)."""
    return objective.identity_vector(self.cfg, self.embedder, (self.frames + 1) / 2)

  def initial_state(self) -> Dict[str, Any]:
    per_network = {net: lpd_animator.network_variables(self.variables['generator'], net) for net in GENERATOR_SIDE}
    per_network['discriminator'] = self.variables['discriminator']
    split = {net: _split(v) for net, v in per_network.items()}
    params = {net: p for net, (p, _) in split.items()}
    state = {net: others for net, (_, others) in split.items()}
    ema = {net: per_network[net] for net in GENERATOR_SIDE}
    params, state, ema = objective.finetune_init(self.cfg, params, state, ema, self.identity(),
                                                 jax.random.PRNGKey(self.settings.seed))
    del params['embedder']
    start = {'step': np.zeros((), np.int32), 'params': params, 'model_state': state,
             'ema_generator': ema['generator'], 'opt_state': objective.init_opt_state(self.cfg, params)}
    # Copies: the EMA, the identity vector and the table start as the same arrays, and the step donates them.
    return jax.tree_util.tree_map(np.array, start)

  def step(self, state: Dict[str, Any], batch: Mapping[str, np.ndarray]):
    """One iteration (the state is donated): (state, the losses)."""
    return self._step_fn(state, batch, self.embedder['params'])

  def batch(self, step: int) -> Dict[str, np.ndarray]:
    """`batch_size` distinct frames (drawn with replacement when N is smaller) by (seed, step), each pose
    frame augmented with a seed of (seed, step, its place in the batch): a resumed run sees the batches an
    uninterrupted one does."""
    n, b = len(self.frames), self.batch_size
    index = np.random.default_rng([self.settings.seed, step]).choice(n, b, replace=b > n)
    poses, targets, masks = [], [], []
    for place, i in enumerate(index):
      seed = np.random.default_rng([self.settings.seed, step, place]).integers(0, 2**31 - 1, 2)
      out = self._augment(self.frames[i:i + 1], self.masks[i:i + 1], tf.constant(seed, tf.int64))
      poses.append(out['pose_imgs'].numpy()[0])
      targets.append(out['target_imgs'].numpy()[0])
      masks.append(out['target_segs'].numpy()[0])
    mask = np.stack(masks)
    return {'pose_frames': (np.stack(poses) + 1) / 2, 'target': (np.stack(targets) + 1) / 2 * mask,
            'target_mask': mask, 'labels': np.zeros((b,), np.int32)}

  def params_variables(self, state: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(variables, metadata) of the params directory: the generator side is the meta-learned embedder (its
    pose BatchNorm statistics as fine-tuning left them, as the official EMA copies buffers) and the
    fine-tuned EMA generator with its `identity_embedding`; the fine-tuned discriminator (not its
    one-row table)."""
    state = jax.device_get(state)
    per_network = {'embedder': {**jax.device_get(self.embedder), **state['model_state']['embedder']},
                   'generator': state['ema_generator']}
    generator_side: Dict[str, Dict[str, Any]] = {}
    for net, variables in per_network.items():
      for collection, tree in variables.items():
        generator_side.setdefault(collection, {})[net] = tree
    discriminator = {**state['model_state']['discriminator'], 'params': state['params']['discriminator']}
    return {'generator': generator_side, 'discriminator': discriminator}, {'batch_size': self.batch_size}


def _step_fn(cfg: objective.StepConfig, perceptual: Mapping[str, Any], seed: int):
  """jit(state, batch, embedder params) -> (state, losses); the pose encoder's dropout draws from (seed, step)."""

  def step(state, batch, embedder_params):
    params = {**state['params'], 'embedder': embedder_params}
    ema = {'embedder': {**state['model_state']['embedder'], 'params': embedder_params},
           'generator': state['ema_generator']}
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), state['step'])
    params, model_state, ema, opt_state, metrics = objective.iteration(cfg, params, state['model_state'], ema,
                                                                       state['opt_state'], perceptual, batch, rng=rng)
    del params['embedder']
    scalars = {k: v for k, v in metrics.items() if k not in ('outputs', 'grads')}
    return {'step': state['step'] + 1, 'params': params, 'model_state': model_state,
            'ema_generator': ema['generator'], 'opt_state': opt_state}, scalars

  return jax.jit(step, donate_argnums=(0,))
