"""The original's training losses (docs/model.md#losses), as pure functions of the forward's outputs.

Every function returns the UNWEIGHTED term; `train_step` multiplies by the configured weights and names the
results as the original does (D_ADV, G_ADV, G_FM, G_VGG19, G_VGGFace, G_L1, G_BCE, G_WPR). Where a term
must not send gradient somewhere (real features, targets), the stop_gradient is applied here.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _relativistic(real: Array, fake: Array, pred_type: str):
  if pred_type == 'ragan':
    return real - fake.mean(), fake - real.mean()
  if pred_type == 'rgan':
    return real - fake, fake - real
  if pred_type == 'gan':
    return real, fake
  raise ValueError(f"adv_pred_type {pred_type!r}: expected 'ragan', 'rgan' or 'gan'")


def adversarial_dis(real_scores: Array, fake_scores: Array, pred_type: str = 'ragan') -> Array:
  """Hinge loss of the discriminator (pass 1 scores; fakes already detached by the caller)."""
  real_preds, fake_preds = _relativistic(real_scores, fake_scores, pred_type)
  return jax.nn.relu(1 - real_preds).mean() + jax.nn.relu(1 + fake_preds).mean()


def adversarial_gen(real_scores: Array, fake_scores: Array, pred_type: str = 'ragan') -> Array:
  """Generator hinge loss: pass-2 fake scores against the DETACHED pass-1 real scores."""
  real_scores = jax.lax.stop_gradient(real_scores)
  real_preds, fake_preds = _relativistic(real_scores, fake_scores, pred_type)
  if pred_type == 'gan':
    return -fake_preds.mean()
  return jax.nn.relu(1 - fake_preds).mean() + jax.nn.relu(1 + real_preds).mean()


def feature_matching(real_feats: Sequence[Array], fake_feats: Sequence[Array], loss_type: str = 'l1') -> Array:
  """Mean over the discriminator's feature maps of L(fake, stop(real)) (L1 or MSE, means)."""
  total = 0.0
  for real, fake in zip(real_feats, fake_feats):
    diff = fake - jax.lax.stop_gradient(real)
    total = total + (jnp.abs(diff).mean() if loss_type == 'l1' else jnp.square(diff).mean())
  return total / len(real_feats)


def pixelwise(fake: Array, real: Array, loss_type: str = 'l1') -> Array:
  diff = fake - jax.lax.stop_gradient(real)
  if loss_type == 'l1':
    return jnp.abs(diff).mean()
  if loss_type == 'mse':
    return jnp.square(diff).mean()
  raise ValueError(f"pix_loss_type {loss_type!r}: expected 'l1' or 'mse'")


def bce_with_logits(logits: Array, targets: Array) -> Array:
  """Mean binary cross-entropy with logits, with soft targets (PyTorch's stable formulation)."""
  return jnp.mean(jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def warping_regularizer(delta_uvs: Array) -> Array:
  return jnp.abs(delta_uvs).mean()


def warping_weight(step: Array, weight: float, decay: float, schedule: int, eps: float) -> Array:
  """The original's decaying warping-regulariser weight at training iteration `step` (0-based).

  It multiplies the weight by `decay` after `schedule` iterations and then every `schedule - 1` iterations
  (its counter restarts at 1), floored at eps; schedule <= 0 or decay == 1 keeps the weight constant.
  """
  if schedule <= 1 or decay == 1.0:
    return jnp.asarray(weight, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  decays = jnp.where(step < schedule, 0.0, 1.0 + jnp.floor((step - schedule) / (schedule - 1)))
  value = jnp.maximum(weight * jnp.power(decay, decays), eps)
  # The original drops the term once the weight has reached eps.
  return jnp.where(value <= eps, 0.0, value)
