"""LPD networks and losses against numbers of the official code (tests/fixtures/lpd_small, README there).

The whole forward of one training batch (embedder -> generator -> projection table -> the discriminator's
three calls) in eval mode and in train mode (BatchNorm batch statistics, the pose encoder's dropout replayed
with the reference's mask, one power iteration per spectral-norm call; the updated buffers compared too),
and every loss term, at tolerances derived from a float64 run of the reference (fixture_utils.limit).
"""

import json

import numpy as np
import pytest

from bilayer_jax.convert import lpd_reference
from bilayer_jax.families.lpd import objective
from bilayer_jax.models.lpd import networks

import fixture_utils
import lpd_utils

FIXTURES = lpd_utils.FIXTURES


@pytest.fixture(scope='module')
def reference():
  tolerances = json.loads((FIXTURES / 'tolerances.json').read_text())
  return lpd_utils.load('weights.npz'), lpd_utils.load('inputs.npz'), tolerances


def _forward(reference, train):
  weights, inputs, _ = reference
  params, state = lpd_utils.variables(weights)
  batch = lpd_utils.batch(inputs)
  keep = lpd_utils.load('outputs_train.npz')['pose_dropout_mask'] if train else None
  out, new_state = objective.forward(lpd_utils.STEP_CFG, params, state, batch, train=train, dropout_keep=keep)
  return params, state, out, new_state


def _named(out):
  named = {'embeds_elemwise': out['identity_each'], 'embeds': out['identity'], 'pose_embedding': out['pose'],
           'fake_rgbs': lpd_utils.nchw(out['fake']), 'fake_segm': lpd_utils.nchw(out['fake_mask']),
           'fake_score_G': out['fake_score_g'], 'fake_score_D': out['fake_score_d'], 'real_score': out['real_score'],
           'real_embedding': out['projection']}
  for side in ('fake', 'real'):
    named.update({f'{side}_features{k}': lpd_utils.nchw(f) for k, f in enumerate(out[f'{side}_features'])})
  return named


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_forward_matches_the_reference(reference, mode):
  _, _, out, _ = _forward(reference, mode == 'train')
  expected = lpd_utils.load(f'outputs_{mode}.npz')
  actual = _named(out)
  fixture_utils.compare(actual, expected, reference[2][f'outputs_{mode}.npz'], actual)


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_adain_parameters_match_the_reference(reference, mode):
  """The MLP output on the reference's own identity and pose vectors (bias, scale per AdaIN, module order)."""
  weights, _, tolerances = reference
  params, state = lpd_utils.variables(weights)
  expected = lpd_utils.load(f'outputs_{mode}.npz')
  generator = networks.Generator(lpd_utils.CFG)
  _, captured = generator.apply({**state['generator'], 'params': params['generator']}, expected['embeds'],
                                expected['pose_embedding'], train=mode == 'train',
                                mutable=['intermediates', 'spectral'])
  actual = {'adain_params': captured['intermediates']['affine_params'][0]}
  fixture_utils.compare(actual, expected, tolerances[f'outputs_{mode}.npz'], actual)


def test_train_mode_updates_buffers_as_the_reference(reference):
  """BatchNorm running statistics (momentum 0.1, unbiased variance) and every spectral-norm u, v after the
  train-mode forward: the discriminator's after its three calls, the table's after one."""
  params, _, _, new_state = _forward(reference, True)
  expected = lpd_utils.load('outputs_train.npz')
  actual = lpd_utils.torch_buffers(params, new_state)
  keys = [k for k in expected if '/' in k]
  assert keys and set(keys) <= set(actual), sorted(set(keys) - set(actual))[:5]
  fixture_utils.compare(actual, expected, reference[2]['outputs_train.npz'], keys)


def test_loss_terms_match_the_reference(reference):
  _, _, out, _ = _forward(reference, True)
  batch = lpd_utils.batch(reference[1])
  terms = objective.loss_terms(lpd_utils.STEP_CFG, out, lpd_utils.perceptual(reference[0]), batch)
  actual = {**terms, 'loss_G': terms['loss_g'], 'loss_D': terms['loss_d']}
  expected = lpd_utils.load('losses.npz')
  fixture_utils.compare(actual, expected, reference[2]['losses.npz'], expected)


def test_small_configuration_has_the_reference_shapes(reference):
  """Every reference key has our variable of the same shape (and no other), both ways."""
  weights = reference[0]
  for network in lpd_reference.NETWORKS:
    state = lpd_utils.state_dict(weights, network)
    variables = lpd_reference.variables_from_state_dict(network, lpd_utils.CFG, state)
    _, table = lpd_reference.split_table(state)
    back = lpd_reference.state_dict_from_variables(network, lpd_utils.CFG, variables, table)
    assert sorted(back) == sorted(state)
    for key, value in state.items():
      np.testing.assert_array_equal(back[key], value, err_msg=key)
