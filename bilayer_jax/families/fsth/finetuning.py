"""FSTH few-shot fine-tuning on one person (docs/fsth.md#fine-tuning), as `bilayer_jax.finetune` runs it.

The embedder's mean embedding ê of the person's frames initialises the generator's ψ = P ê and the
discriminator's w′ = w₀ + ê; each iteration then trains on `batch_size` frames drawn at random (the
reference's finetuning_training.py: Adam 5e-5 for the generator, two 2e-4 hinge steps for the discriminator,
the run's content-loss weights). The reference never updates ψ and w′ (its optimisers predate them); the
paper trains them: `train_adaptive`. The params directory written keeps the meta-trained embedder.
"""

import dataclasses
from typing import Any, Dict, Mapping, Sequence, Tuple

import jax
import numpy as np

from bilayer_jax import config as config_lib
from bilayer_jax.families.fsth import objective
from bilayer_jax.families.fsth import setup
from bilayer_jax.inference import fsth_animator
from bilayer_jax.inference import preprocess

DEFAULT_BATCH_SIZE = 2  # the reference's


class Finetuner:
  """One person's fine-tuning: the starting state, the jitted step, the batch of each step and the
  variables of the params directory (the interface `bilayer_jax.finetune` drives).

  Args:
    cfg_model: the architecture. variables: the meta-trained params directory's variables.
    config: the meta-training run's config (losses, optimisers). sources: the person's frames.
    settings: `bilayer_jax.finetune.Settings` (seed, batch_size, train_adaptive).
  """

  def __init__(self, cfg_model, variables: Mapping[str, Any], config: config_lib.RunConfig,
               sources: Sequence[preprocess.SourceInputs], settings: Any):
    self.variables = variables
    self.settings = settings
    self.batch_size = settings.batch_size or DEFAULT_BATCH_SIZE
    self.cfg = setup.objective_config(dataclasses.replace(config, model=cfg_model))
    perceptual = jax.device_put(setup.content_params(config, self.cfg))
    animator = fsth_animator.FSTHAnimator(cfg_model, variables['generator'])
    self.embedding = animator.init_avatar(list(sources)).embedding
    self.frames = np.concatenate([(s.imgs[0] + 1) / 2 for s in sources]).astype(np.float32)
    self.sketches = (animator.sketches(np.concatenate([s.poses[0] for s in sources])) + 1) / 2
    self._step_fn = _step_fn(self.cfg, perceptual, settings.train_adaptive)

  def initial_state(self) -> Dict[str, Any]:
    generator = fsth_animator.network_variables(self.variables['generator'], 'generator')
    start = objective.finetune_init(self.cfg, {'generator': generator,
                                               'discriminator': self.variables['discriminator']}, self.embedding)
    return {'step': np.zeros((), np.int32), 'variables': start,
            'opt_state': objective.init_finetune_opt_state(self.cfg, start, self.settings.train_adaptive)}

  def step(self, state: Dict[str, Any], batch: Mapping[str, np.ndarray]):
    """One iteration (the state is donated): (state, the losses)."""
    return self._step_fn(state, batch)

  def batch(self, step: int) -> Dict[str, np.ndarray]:
    """`batch_size` frames drawn at random; the draw is a function of (seed, step), so a resumed run sees
    the batches an uninterrupted one does."""
    index = np.random.default_rng([self.settings.seed, step]).integers(0, len(self.frames), self.batch_size)
    return {'frame': self.frames[index], 'landmarks': self.sketches[index]}

  def params_variables(self, state: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(variables, metadata) of the params directory: the meta-trained embedder with the fine-tuned
    generator and discriminator."""
    tuned = jax.device_get(state['variables'])
    generator_side = {c: {**tree, **({'generator': tuned['generator'][c]} if c in tuned['generator'] else {})}
                      for c, tree in self.variables['generator'].items()}
    return ({'generator': generator_side, 'discriminator': tuned['discriminator']},
            {'train_adaptive': self.settings.train_adaptive, 'batch_size': self.batch_size})


def _step_fn(cfg, perceptual, train_adaptive: bool):
  def step(state, batch):
    new_vars, opt_state, metrics = objective.finetune_iteration(cfg, state['variables'], state['opt_state'],
                                                                perceptual, batch, train_adaptive)
    scalars = {k: metrics[k] for k in ('loss_g', 'loss_cnt', 'loss_adv', 'loss_d1')}
    return {'step': state['step'] + 1, 'variables': new_vars, 'opt_state': opt_state}, scalars
  return jax.jit(step, donate_argnums=(0,))
