"""FSTH networks against numbers of the reference implementation (tests/fixtures/fsth_small, README there).

Each network is compared on its own reference inputs (the generator on the reference's embeddings, the
discriminator on the reference's generated images), in eval mode (stored spectral-norm vectors) and in train
mode (one power iteration, whose updated u and v are compared too), at tolerances derived from a float64 run
of the reference (fixture_utils.limit).
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from bilayer_jax.convert import fsth_reference
from bilayer_jax.models.fsth import networks
from bilayer_jax.models.fsth.config import FSTHConfig

import fixture_utils

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'fsth_small'
CFG = FSTHConfig(width=8).validate()


def _load(name):
  with np.load(FIXTURES / name) as data:
    return dict(data)


def _nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def reference():
  weights = _load('weights.npz')
  state = {net: {k.split('/', 1)[1]: v for k, v in weights.items() if k.startswith(net + '/')}
           for net in fsth_reference.NETWORKS}
  tolerances = json.loads((FIXTURES / 'tolerances.json').read_text())
  return state, _load('inputs.npz'), _load('outputs_eval.npz'), _load('outputs_train.npz'), tolerances


def _module_and_args(network, inputs, outputs):
  frames, landmarks = (_nhwc(inputs[k]).astype(np.float32) / 255 for k in ('frames', 'landmarks'))
  if network == 'embedder':
    return networks.Embedder(CFG), (frames, landmarks)
  if network == 'generator':
    return networks.Generator(CFG), (landmarks, outputs['embeddings'])
  video_vectors = np.asarray(jax.nn.leaky_relu(inputs['video_vectors'].T))  # as the reference's load_W_i
  return networks.Discriminator(CFG), (_nhwc(outputs['images']), landmarks, video_vectors)


def _variables(network, state, module, args):
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
  return fsth_reference.variables_from_state_dict(network, state[network], abstract)


def _named_outputs(network, result):
  if network == 'embedder':
    return {'embeddings': result}
  if network == 'generator':
    return {'images': np.asarray(result).transpose(0, 3, 1, 2)}
  scores, features = result
  named = {'scores': scores}
  named.update({f'discriminator_feature{k}': np.asarray(f).transpose(0, 3, 1, 2) for k, f in enumerate(features)})
  return named


@pytest.mark.parametrize('network', fsth_reference.NETWORKS)
def test_eval_forward_matches_the_reference(reference, network):
  state, inputs, outputs_eval, _, tolerances = reference
  module, args = _module_and_args(network, inputs, outputs_eval)
  result = module.apply(_variables(network, state, module, args), *args)
  actual = _named_outputs(network, result)
  fixture_utils.compare(actual, outputs_eval, tolerances['outputs_eval.npz'], actual)


@pytest.mark.parametrize('network', fsth_reference.NETWORKS)
def test_train_forward_and_power_iteration_match_the_reference(reference, network):
  state, inputs, _, outputs_train, tolerances = reference
  module, args = _module_and_args(network, inputs, outputs_train)
  variables = _variables(network, state, module, args)
  result, updated = module.apply(variables, *args, train=True, mutable=['spectral'])
  actual = _named_outputs(network, result)
  for key in state[network]:
    if key.endswith(('weight_u', 'weight_v')):
      collection, path = fsth_reference.flax_location(network, key)
      node = updated[collection]
      for name in path.split('/'):
        node = node[name]
      actual[f'{network}/{key}'] = np.asarray(node)
  fixture_utils.compare(actual, outputs_train, tolerances['outputs_train.npz'], actual)


def test_the_reference_state_dicts_round_trip_with_key_errors_named(reference):
  state = reference[0]
  module = networks.Embedder(CFG)
  x = np.zeros((1, 224, 224, 3), np.float32)
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), x, x)
  bad = dict(state['embedder'])
  bad['resDown1.conv_r1.weight_orig'] = bad['resDown1.conv_r1.weight_orig'][:, :3]
  del bad['self_att.gamma']
  bad['resDown7.conv_l1.bias'] = np.zeros(3, np.float32)
  with pytest.raises(fsth_reference.StateDictError) as error:
    fsth_reference.variables_from_state_dict('embedder', bad, abstract)
  message = str(error.value)
  assert "key 'resDown1.conv_r1.weight_orig': expected shape (8, 6, 3, 3), found (8, 3, 3, 3)" in message
  assert "unexpected key 'resDown7.conv_l1.bias'" in message
  assert 'missing key for params/trunk/self_att/gamma' in message


@pytest.mark.parametrize('network', fsth_reference.NETWORKS)
def test_state_dicts_convert_both_ways_bit_exactly(reference, network):
  state, inputs, outputs_eval, _, _ = reference
  module, args = _module_and_args(network, inputs, outputs_eval)
  variables = _variables(network, state, module, args)
  video_matrix = None
  if network == 'discriminator':
    _, video_matrix = fsth_reference.split_video_matrix(state[network])
  back = fsth_reference.state_dict_from_variables(network, variables, video_matrix)
  assert sorted(back) == sorted(state[network])
  for key, value in state[network].items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def _parameter_count(module, *args) -> int:
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)['params']
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))


def test_full_size_parameter_counts_are_the_references():
  """The reference's counts at its size (measured by summing its parameters; the discriminator's per-video
  matrix W_i, 512 x 32 = 16,384 there, is kept by the trainer here)."""
  full = FSTHConfig()
  assert (full.projection_length, full.embedding_dim) == (13184, 512)  # the reference's P_LEN
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32)
  embedding = jax.ShapeDtypeStruct((1, full.embedding_dim), np.float32)
  assert _parameter_count(networks.Embedder(full), image, image) == 14_907_265
  assert _parameter_count(networks.Generator(full), image, embedding) == 38_160_037
  assert _parameter_count(networks.Discriminator(full), image, image, embedding) == 19_644_290 - 16_384


def test_fresh_convolutions_use_torchs_xavier_bound():
  """The reference's train.py re-initialises convolutions with xavier_uniform_: bound sqrt(6 / ((I + O) k²))."""
  from bilayer_jax.models.fsth import blocks  # pylint: disable=g-import-not-at-top
  for cin, cout, k in ((6, 64, 9), (64, 64, 3)):
    kernel = blocks.Conv(cout, k).init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, cin), np.float32))
    weights = np.asarray(kernel['params']['kernel'])
    bound = np.sqrt(6 / ((cin + cout) * k * k))
    assert bound * 0.95 < np.abs(weights).max() <= bound
