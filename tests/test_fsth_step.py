"""One FSTH meta-learning iteration against the reference's (tests/fixtures/fsth_small/step, README there):
every loss term, the generator-side outputs, the gradients of the embedder + generator step and of the first
discriminator step, and every parameter and spectral-norm vector after the iteration (one E+G Adam step, two
discriminator Adam steps, six discriminator power iterations)."""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest

from bilayer_jax.convert import fsth_reference
from bilayer_jax.convert import perceptual as perceptual_io
from bilayer_jax.families.fsth import objective
from bilayer_jax.models import vgg
from bilayer_jax.models.fsth import networks
from bilayer_jax.models.fsth.config import FSTHConfig

import fixture_utils

STEP = pathlib.Path(__file__).parent / 'fixtures' / 'fsth_small' / 'step'
DIVISOR = 16
CFG = objective.MetaStepConfig(
    model=FSTHConfig(width=64 // DIVISOR).validate(),
    vgg19=dataclasses.replace(vgg.FSTH_VGG19, width_divisor=DIVISOR),
    vggface=dataclasses.replace(vgg.FSTH_VGGFACE, width_divisor=DIVISOR))


def _load(name):
  with np.load(STEP / name) as data:
    return dict(data)


def _nhwc(x):
  return np.moveaxis(np.asarray(x), -3, -1)


def _batch(inputs):
  pairs = _nhwc(inputs['frames_landmarks']).astype(np.float32) / 255  # (N, K, 2, H, W, 3)
  t = int(inputs['target_index'])
  rows = np.asarray(jax.nn.leaky_relu(inputs['video_vectors'].T))  # as the reference's load_W_i
  return {'frames': pairs[:, :, 0], 'landmarks': pairs[:, :, 1], 'target_frame': pairs[:, t, 0],
          'target_landmarks': pairs[:, t, 1], 'video_rows': rows}


def _abstract(network, batch):
  m = CFG.model
  frame = batch['target_frame']
  args = {'embedder': (frame, frame), 'generator': (frame, batch['video_rows']),
          'discriminator': (frame, frame, batch['video_rows'])}[network]
  module = {'embedder': networks.Embedder, 'generator': networks.Generator,
            'discriminator': networks.Discriminator}[network](m)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)


def _state_dicts(weights, prefix):
  return {k.split('/', 1)[1]: v for k, v in weights.items() if k.startswith(prefix + '/')}


def _reference_weights(networks_wanted, batch):
  """(variables of the wanted networks, perceptual params) from the step fixture's weights."""
  weights = _load('weights.npz')
  variables = {}
  for net in networks_wanted:
    state = _state_dicts(weights, net)
    if net == 'discriminator':
      state, _ = fsth_reference.split_video_matrix(state)
    variables[net] = fsth_reference.variables_from_state_dict(net, state, _abstract(net, batch))
  vggface = fsth_reference.vggface_to_features_layout(_state_dicts(weights, 'vggface'))
  perceptual = {CFG.vgg19.name: perceptual_io.vgg_params_from_state_dict(CFG.vgg19, _state_dicts(weights, 'vgg19')),
                CFG.vggface.name: perceptual_io.vgg_params_from_state_dict(CFG.vggface, vggface)}
  return variables, perceptual


@pytest.fixture(scope='module')
def step():
  batch = _batch(_load('inputs.npz'))
  variables, perceptual = _reference_weights(fsth_reference.NETWORKS, batch)
  after, metrics = jax.jit(lambda v, p, b: objective.meta_step(CFG, v, p, b))(variables, perceptual, batch)
  tolerances = json.loads((STEP / 'tolerances.json').read_text())['meta_step.npz']
  return jax.device_get(after), jax.device_get(metrics), _load('meta_step.npz'), tolerances


def _as_reference(prefix, network, tree, video_rows=None):
  state = fsth_reference.state_dict_from_variables(network, tree, video_rows)
  return {f'{prefix}/{network}/{k}': v for k, v in state.items()}


def test_losses_and_outputs_match(step):
  _, metrics, reference, tolerances = step
  actual = {k: metrics[k] for k in ('loss_cnt', 'loss_adv', 'loss_match', 'loss_g', 'loss_d1', 'loss_d2', 'e_hat',
                                    'r_hat')}
  actual['x_hat'] = np.moveaxis(metrics['x_hat'], -1, 1)
  fixture_utils.compare(actual, reference, tolerances, actual)


def test_gradients_match(step):
  _, metrics, reference, tolerances = step
  actual = {}
  for net in ('embedder', 'generator'):
    actual.update(_as_reference('grad_g', net, {'params': metrics['grad_g'][net]}))
  grads_d = metrics['grad_d']
  actual.update(_as_reference('grad_d', 'discriminator', {'params': grads_d['net']}, grads_d['video_rows']))
  keys = [k for k in actual if k in reference]  # the reference leaves unused parameters without gradient
  assert len(keys) >= len(actual) - 2, sorted(set(actual) - set(reference))
  fixture_utils.compare(actual, reference, tolerances, keys, gradient=True)


def test_parameters_and_spectral_vectors_after_the_iteration_match(step):
  after, _, reference, tolerances = step
  actual = {}
  for net in fsth_reference.NETWORKS:
    rows = after['video_rows'] if net == 'discriminator' else None
    actual.update(_as_reference('after', net, after['variables'][net], rows))
  assert set(actual) == {k for k in reference if k.startswith('after/')}
  fixture_utils.compare(actual, reference, tolerances, actual)


@pytest.fixture(scope='module')
def finetune():
  inputs = _load('inputs.npz')
  variables, perceptual = _reference_weights(('generator', 'discriminator'), _batch(inputs))
  images = _nhwc(inputs['finetune_images']).astype(np.float32) / 255  # (N, 2, H, W, 3): frame, landmarks
  finetune_batch = {'frame': images[:, 0], 'landmarks': images[:, 1]}
  initial = objective.finetune_init(CFG, variables, inputs['finetune_e_hat'][0, :, 0])
  after, metrics = jax.jit(lambda v, p, b: objective.finetune_step(CFG, v, p, b))(initial, perceptual, finetune_batch)
  adaptive, _ = jax.jit(lambda v, p, b: objective.finetune_step(CFG, v, p, b, train_adaptive=True))(
      initial, perceptual, finetune_batch)
  tolerances = json.loads((STEP / 'tolerances.json').read_text())['finetune_step.npz']
  return (jax.device_get(initial), jax.device_get(after), jax.device_get(metrics), _load('finetune_step.npz'),
          tolerances, jax.device_get(adaptive))


def test_finetuning_iteration_matches(finetune):
  """psi = P e_hat and w' = w0 + e_hat, the losses, the outputs, the gradients (psi and w' included), and
  psi and w' unchanged after the iteration, as in the reference."""
  initial, after, metrics, reference, tolerances, _ = finetune
  actual = {k: metrics[k] for k in ('loss_cnt', 'loss_adv', 'loss_g', 'loss_d1', 'loss_d2', 'r_hat')}
  actual['x_hat'] = np.moveaxis(metrics['x_hat'], -1, 1)
  actual['init/generator/psi'] = initial['generator']['params']['psi'][:, None]
  actual['init/discriminator/w_prime'] = initial['discriminator']['params']['w_prime'][:, None]
  actual['after/generator/psi'] = after['generator']['params']['psi'][:, None]
  actual['after/discriminator/w_prime'] = after['discriminator']['params']['w_prime'][:, None]
  fixture_utils.compare(actual, reference, tolerances, actual)
  grads = {**_as_reference('grad_g', 'generator', {'params': metrics['grad_g']}),
           **_as_reference('grad_d', 'discriminator', {'params': metrics['grad_d']})}
  keys = [k for k in grads if k in reference]
  assert len(keys) == len([k for k in reference if k.startswith('grad_')]), sorted(set(reference) - set(grads))
  fixture_utils.compare(grads, reference, tolerances, keys, gradient=True)


def test_the_papers_finetuning_trains_psi_and_w_prime(finetune):
  """train_adaptive=True: psi takes one Adam step and w' two (|update| = lr per step wherever the gradient is
  not ~0 and keeps its sign), the other parameters as in the reference's iteration."""
  initial, after, metrics, _, _, adaptive = finetune
  for net, name, lr in (('generator', 'psi', CFG.generator_lr),
                        ('discriminator', 'w_prime', CFG.discriminator_updates * CFG.discriminator_lr)):
    grad = metrics['grad_g' if net == 'generator' else 'grad_d'][name]
    step = adaptive[net]['params'][name] - initial[net]['params'][name]
    big = np.abs(grad) > 1e-6
    assert big.mean() > 0.5, name
    np.testing.assert_allclose(np.abs(step[big]), lr, rtol=5e-2, err_msg=name)  # the 2nd step: a new gradient
    np.testing.assert_array_equal(np.sign(step[big]), -np.sign(grad[big]))
  np.testing.assert_allclose(adaptive['generator']['params']['res1']['conv1']['kernel'],
                             after['generator']['params']['res1']['conv1']['kernel'], atol=1e-6)
