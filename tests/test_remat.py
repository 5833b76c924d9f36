"""train.remat: every rematerialisation policy of the bi-layer step gives the losses, gradients and updated
parameters of 'none' (it only changes what the backward pass stores and what it recomputes)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilayer_jax.families.bilayer import objective
from bilayer_jax.families.bilayer import setup

import train_utils


def _batch(cfg, rng):
  s, c, b = cfg.model.image_size, cfg.model.pse_in_channels, 2
  img = lambda: rng.uniform(-1, 1, (b, 1, s, s, 3)).astype(np.float32)
  seg = lambda: (rng.uniform(0, 1, (b, 1, s, s, 1)) > 0.5).astype(np.float32)
  pose = lambda: rng.uniform(-1, 1, (b, 1, c)).astype(np.float32)
  return {'source_imgs': img(), 'source_segs': seg(), 'source_stickmen': img(), 'source_poses': pose(),
          'target_imgs': img(), 'target_segs': seg(), 'target_stickmen': img(), 'target_poses': pose()}


def _losses_and_gradients(cfg, state, batch):
  trained = objective.trainable_params(cfg, state['params'])
  (total, (losses, _, _, _)), grads = jax.value_and_grad(
      lambda p: objective.compute_losses(cfg, state, p, batch), has_aux=True)(trained)
  return jax.device_get({'total': total, **losses}), jax.device_get(grads)


def _float64(tree):
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x, np.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else x, tree)


@pytest.fixture(scope='module')
def reference():
  """float64 losses and gradients without remat (the float32 step's gradients are rounding-sensitive: the
  feature-matching backward amplifies rounding, tests/test_train_parity.py; float64 makes the comparison
  exact up to ~1e-12)."""
  cfg = dataclasses.replace(setup.step_config(train_utils.tiny_config(''), 'base'), dtype=jnp.float64)
  batch = _batch(cfg, np.random.default_rng(0))
  with jax.enable_x64(True):
    variables = objective.init_variables(cfg, 0, objective.variable_shapes(cfg, batch))
    state, batch = _float64(jax.device_get(objective.init_state(cfg, variables))), _float64(batch)
    return cfg, state, batch, jax.jit(lambda s, b: _losses_and_gradients(cfg, s, b))(state, batch)


@pytest.mark.slow  # 80 s: three float64 compiles of the step
@pytest.mark.parametrize('policy', ['convs', 'full'])
def test_every_policy_gives_the_losses_and_gradients_of_none(reference, policy):
  cfg, state, batch, (expected_losses, expected_grads) = reference
  remat_cfg = dataclasses.replace(cfg, remat=policy)
  with jax.enable_x64(True):
    losses, grads = jax.jit(lambda s, b: _losses_and_gradients(remat_cfg, s, b))(state, batch)
  for name, value in expected_losses.items():
    np.testing.assert_allclose(losses[name], value, rtol=1e-10, err_msg=name)
  flat, _ = jax.tree_util.tree_flatten_with_path(grads)
  expected = dict((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(expected_grads)[0])
  assert len(flat) == len(expected) > 50 and all(v.dtype == np.float64 for _, v in flat)
  # Judged against each network's largest gradient: some arrays' exact gradient is 0 (a bias before a
  # normalisation), where any order of float64 summation leaves ~1e-15.
  scale = {}
  for path, want in expected.items():
    network = path.split(']')[0]
    scale[network] = max(scale.get(network, 0.0), float(np.abs(want).max()))
  for path, value in flat:
    key = jax.tree_util.keystr(path)
    assert np.abs(value - expected[key]).max() <= 1e-9 * scale[key.split(']')[0]], key
