"""One training step against the ORIGINAL: every loss, every gradient, the intended discriminator update,
the Adam step, for the base and the enhancer stage (fixtures README §5 tolerances)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bilayer_jax.convert import original

from bilayer_jax import config as config_lib
from bilayer_jax import parity
from bilayer_jax.convert import torch_names
from bilayer_jax.families.bilayer import objective as S
from bilayer_jax.families.bilayer import setup
from bilayer_jax.models.config import BASE_NETWORKS

import fixture_utils

# The fixtures were made with the perceptual loss removed (README §3); otherwise the paper's settings.
NO_PERCEPTUAL = config_lib.LossConfig(per_vgg19_weight=0.0, per_vggface_weight=0.0)
_BUFFERS = ('weight_u', 'weight_v', 'running_mean', 'running_var', 'num_batches_tracked', 'identity_grid',
            'frequencies')


def _batch(fixtures_dir):
  with np.load(fixtures_dir / 'inputs.npz') as data:
    return parity.inputs_from_original_layout({k: (v[:, :1] if k.startswith('target') else v)
                                               for k, v in data.items()})


def _stage(small_run, stage):
  cfg, variables, _ = small_run
  if stage == 'base':
    variables = {'generator': {c: {n: t for n, t in tree.items() if n != 'texture_enhancer'}
                               for c, tree in variables['generator'].items()},
                 'discriminator': variables['discriminator']}
    step_cfg = setup.step_config(config_lib.RunConfig(model=cfg, loss=NO_PERCEPTUAL), 'base')
  else:
    step_cfg = setup.step_config(config_lib.RunConfig(
        model=cfg, stage='enhancer', networks_to_train=('texture_enhancer', 'discriminator'), loss=NO_PERCEPTUAL),
                                 'enhancer')
  return step_cfg, S.init_state(step_cfg, variables)


def _torch_grads(step_cfg, state, net, grads):
  """Gradients in the original's state_dict layout (parameters only)."""
  model_state = state['model_state']['discriminator' if net == 'discriminator' else 'generator']
  spectral = model_state['spectral'] if net == 'discriminator' else model_state['spectral'][net]
  sd = torch_names.variables_to_state_dict(net, step_cfg.model, {'params': jax.device_get(grads),
                                                                 'spectral': jax.device_get(spectral)})
  return {k: v for k, v in sd.items() if not k.endswith(_BUFFERS)}


@pytest.fixture(scope='module', autouse=True)
def fully_optimised():
  """Compare what users run (XLA fully optimising), not the fast-compiling test mode."""
  previous = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


@pytest.fixture(scope='module', params=['base', 'enhancer'])
def step_outputs(request, small_run, fixtures_dir):
  step_cfg, state = _stage(small_run, request.param)
  trained = S.trainable_params(step_cfg, state['params'])
  grad_fn = jax.jit(jax.value_and_grad(lambda p: S.compute_losses(step_cfg, state, p, _batch(fixtures_dir)),
                                       has_aux=True))
  (total, (losses, _, _, _)), grads = grad_fn(trained)
  return request.param, step_cfg, state, total, losses, grads


def test_losses_match(step_outputs, fixtures_dir):
  stage, _, _, total, losses, _ = step_outputs
  name = 'outputs_train.npz' if stage == 'base' else 'outputs_enh_train.npz'
  with np.load(fixtures_dir / name) as ref:
    expected = sorted(k.split('/', 1)[1] for k in ref.files if k.startswith('losses/') and k != 'losses/total')
    assert sorted(losses) == expected
    ours = {f'losses/{k}': np.asarray([v]) for k, v in losses.items()}
    ours['losses/total'] = np.asarray([total])
    fixture_utils.compare(ours, dict(ref), fixture_utils.tolerances(name), ['losses/total'] +
                          [f'losses/{k}' for k in expected])


def _float64(tree):
  return jax.tree_util.tree_map(
      lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, tree)


def _gradients_by_key(stage, step_cfg, state, grads):
  """({reference key: our gradient}, reference file) for the stage's trained generator-side networks."""
  if stage == 'base':
    ref_file, nets, prefix = 'grads_train.npz', BASE_NETWORKS, '{net}/'
  else:
    ref_file, nets, prefix = 'outputs_enh_train.npz', ('texture_enhancer',), 'grad/{net}/'
  return {prefix.format(net=net) + k: np.asarray(v, np.float64)
          for net in nets for k, v in _torch_grads(step_cfg, state, net, grads[net]).items()}, ref_file


@pytest.fixture(scope='module', params=['base', 'enhancer'])
def float64_gradients(request, small_run, fixtures_dir):
  """Our step's gradients computed in float64 (the model, its statistics and losses follow the dtype)."""
  step_cfg, state = _stage(small_run, request.param)
  step_cfg = dataclasses.replace(step_cfg, dtype=jnp.float64)
  with jax.enable_x64(True):
    state, batch = _float64(state), _float64(_batch(fixtures_dir))
    grads = jax.jit(jax.grad(lambda p: S.compute_losses(step_cfg, state, p, batch)[0]))(
        S.trainable_params(step_cfg, state['params']))
    assert all(g.dtype == jnp.float64 for g in jax.tree_util.tree_leaves(grads))
    return (request.param,) + _gradients_by_key(request.param, step_cfg, state, jax.device_get(grads))


def _check_against_reference(ours, ref_file, fixtures_dir, relative=None):
  with np.load(fixtures_dir / ref_file) as ref:
    keys = [k for k in ours if k in ref.files]
    # Parameters the original leaves without gradient (None) are the unused branches of the embedder's
    # last decoder block; ours are exactly zero there.
    for k in set(ours) - set(keys):
      assert '.dec_blocks.' in k and not np.any(ours[k]), k
    worst = fixture_utils.compare(ours, dict(ref), fixture_utils.tolerances(ref_file), keys, gradient=True,
                                  relative=relative)
    errors = [np.abs(ours[k] - ref[k]).max() / np.abs(ref[k]).max() for k in keys if np.abs(ref[k]).max() > 1e-5]
  return worst, float(np.median(errors))


def test_gradients_match_in_float64(float64_gradients, fixtures_dir):
  """The strict rule of the fixtures README §5: the reference is the original's float32, whose own distance
  to exact arithmetic is `tol`; our float64 gradients sit within 0.1 of the limit (measured)."""
  stage, ours, ref_file = float64_gradients
  worst, median = _check_against_reference(ours, ref_file, fixtures_dir)
  print(f'{stage} float64 gradients: worst diff/limit {worst:.3f}, median relative error {median:.1e}')


# The float32 gradients of a step are a rounding-sensitive quantity: the feature-matching term's backward
# amplifies rounding, and how much depends on XLA:CPU's code generation (measured on one Sapphire Rapids
# CPU, worst / median per-tensor error relative to max|ref|: 8.4e-3 / 5.9e-4 with AVX2 or AVX-512 code,
# 4.6e-2 / 7.1e-4 with SSE4.2 code; an older CPU gave 1e-4 with AVX2). Exact arithmetic is checked above;
# this bounds what float32 adds, with the README's float32 rule of thumb (2e-2 of max|ref| per tensor) and
# a median that a routing or scaling error (O(1)) cannot meet.
FLOAT32_GRADIENT_RELATIVE = 2e-2
FLOAT32_GRADIENT_MEDIAN = 3e-3


def test_float32_gradients_within_rounding(step_outputs, fixtures_dir):
  stage, step_cfg, state, _, _, grads = step_outputs
  ours, ref_file = _gradients_by_key(stage, step_cfg, state, grads)
  worst, median = _check_against_reference(ours, ref_file, fixtures_dir, relative=FLOAT32_GRADIENT_RELATIVE)
  print(f'{stage} float32 gradients: worst diff/limit {worst:.3f}, median relative error {median:.1e}')
  assert median < FLOAT32_GRADIENT_MEDIAN


def test_intended_discriminator_gradient(step_outputs, fixtures_dir):
  stage, step_cfg, state, _, _, grads = step_outputs
  if stage != 'base':
    # The fixtures hold the intended discriminator update of the base step only; in the enhancer stage the
    # discriminator must still receive a real gradient (the original's never does:
    # docs/original_bugs.md#the-enhancer-stage-trains-nothing).
    leaves = jax.tree_util.tree_leaves(grads['discriminator'])
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(np.abs(g).sum()) for g in leaves) > 0
    return
  ours = {f'grad/discriminator/{k}': v for k, v in _torch_grads(step_cfg, state, 'discriminator',
                                                                 grads['discriminator']).items()}
  with np.load(fixtures_dir / 'dis_intended_update.npz') as ref:
    keys = [k for k in ref.files if k.startswith('grad/')]
    assert sorted(keys) == sorted(ours)
    fixture_utils.compare(ours, dict(ref), fixture_utils.tolerances('dis_intended_update.npz'), keys, gradient=True)


def _reference_tree(step_cfg, state, net, ref, prefix):
  """Reference arrays (original layout, `prefix + key`) as this network's Flax params tree."""
  variables = original.network_variables(S.model_variables(state), net)
  current = torch_names.variables_to_state_dict(net, step_cfg.model, jax.device_get(variables))
  sd = {k: ref[prefix + k] if prefix + k in ref.files else (v if k.endswith(_BUFFERS) else np.zeros_like(v))
        for k, v in current.items()}
  return torch_names.state_dict_to_variables(net, step_cfg.model, sd, variables)['params']


@pytest.mark.parametrize('stage,grad_file,grad_prefix,params_file,nets', [
    ('base', 'grads_train.npz', '{net}/', 'state_after_train_step.npz', BASE_NETWORKS),
    ('base', 'dis_intended_update.npz', 'grad/{net}/', 'dis_intended_update.npz', ('discriminator',)),
    ('enhancer', 'outputs_enh_train.npz', 'grad/{net}/', 'outputs_enh_train.npz', ('texture_enhancer',)),
])
def test_adam_step_on_reference_gradients(small_run, fixtures_dir, stage, grad_file, grad_prefix, params_file, nets):
  """Our per-network Adam applied to the ORIGINAL's gradients gives its post-step parameters (README §5)."""
  step_cfg, state = _stage(small_run, stage)
  optimizers = S.make_optimizers(step_cfg)
  trained = S.trainable_params(step_cfg, state['params'])
  with np.load(fixtures_dir / grad_file) as grads_ref, np.load(fixtures_dir / params_file) as params_ref:
    for net in nets:
      grads = _reference_tree(step_cfg, state, net, grads_ref, grad_prefix.format(net=net))
      updates, _ = optimizers[net].update(grads, optimizers[net].init(trained[net]), trained[net])
      stepped = {net: optax.apply_updates(trained[net], updates)}
      new_state = {**state, 'params': S.merge_trainable(state['params'], stepped)}
      new = torch_names.variables_to_state_dict(
          net, step_cfg.model, jax.device_get(original.network_variables(S.model_variables(new_state), net)))
      keys = [k for k in new if f'params_after_step/{net}/{k}' in params_ref.files]
      assert len(keys) == len([k for k in params_ref.files if k.startswith(f'params_after_step/{net}/')])
      for key in keys:
        # README §5: <= 1.5e-8 with its float32 formula; optax orders the same float32 operations
        # differently, which moves a few large entries by one ulp.
        np.testing.assert_allclose(new[key], params_ref[f'params_after_step/{net}/{key}'], rtol=2.5e-7, atol=2e-8,
                                   err_msg=f'{net}.{key}')
