"""Forward parity with the ORIGINAL code's outputs (tests/fixtures/original_small, made by the original).

Eval (infer.py path, through the parity CLI), the base-stage training forward (train-mode BN batch
statistics, spectral-norm power iterations, masking, both discriminator passes) and the enhancer-stage
training forward, plus every buffer (BN running stats, num_batches_tracked, spectral u/v) after them.
"""

import subprocess
import sys

import jax
import numpy as np

from bilayer_jax import parity
from bilayer_jax.convert import original
from bilayer_jax.convert import torch_names
from bilayer_jax.models.bilayer import BilayerGenerator, discriminator_passes
from bilayer_jax.models.discriminator import Discriminator

import fixture_utils

BASE_NETS = ('identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator')


def _training_batch(fixtures_dir):
  with np.load(fixtures_dir / 'inputs.npz') as data:
    inputs = {k: (v[:, :1] if k.startswith('target') else v) for k, v in data.items()}  # T = 1 (README §3)
  return parity.inputs_from_original_layout(inputs)


def _buffers(cfg, variables, state_gen, state_dis, networks):
  merged = {'generator': {**variables['generator'], **state_gen},
            'discriminator': {**variables['discriminator'], **state_dis}}
  result = {}
  for net in networks:
    sd = torch_names.variables_to_state_dict(net, cfg, jax.device_get(original.network_variables(merged, net)))
    result.update({f'buffers_after_forward/{net}/{k}': v for k, v in sd.items()})
  return result


def _train_outputs(out, dout):
  res = parity.outputs_to_original_layout(
      {**out, **{k: dout[k] for k in ('real_scores', 'fake_scores_dis', 'fake_scores_gen')}})
  for name in ('real_feats_gen', 'fake_feats_gen'):
    for i, feat in enumerate(dout[name]):
      res[f'{name}/{i}'] = np.asarray(feat).transpose(0, 3, 1, 2)
  return res


def test_eval_parity_through_cli(fixtures_dir, enh_run_dir, tmp_path):
  out_path = tmp_path / 'outputs.npz'
  subprocess.run([sys.executable, '-m', 'bilayer_jax.parity', f'--run_dir={fixtures_dir}', '--epoch=1',
                  f'--enh_run_dir={enh_run_dir}', '--enh_epoch=1', f'--inputs={fixtures_dir / "inputs.npz"}',
                  f'--out={out_path}'], check=True, capture_output=True)
  with np.load(out_path) as ours, np.load(fixtures_dir / 'outputs_eval.npz') as ref:
    keys = [k for k in ref.files if k != '_aliases']
    worst = fixture_utils.compare(dict(ours), dict(ref), fixture_utils.tolerances('outputs_eval.npz'), keys)
    # Entries the original leaves out as bit-identical aliases.
    for alias in ref['_aliases']:
      name, same = str(alias).split('=')
      np.testing.assert_array_equal(ours[name], ours[same])
  print(f'eval parity: {len(keys)} arrays, worst diff/limit {worst:.3f}')


def test_base_training_forward_and_buffers(small_run, fixtures_dir):
  cfg, variables, _ = small_run
  batch = _training_batch(fixtures_dir)
  gen = BilayerGenerator(cfg, with_enhancer=False)
  gen_vars = {c: {n: t for n, t in tree.items() if n != 'texture_enhancer'}
              for c, tree in variables['generator'].items()}
  out, state_gen = jax.jit(lambda v, b: gen.apply(v, b, train=BASE_NETS, inf_apply_masks=True,
                                                  mutable=['batch_stats', 'spectral']))(gen_vars, batch)
  dout, state_dis = discriminator_passes(Discriminator(cfg), variables['discriminator'], out['target_imgs'],
                                         out['pred_target_imgs'], batch['target_stickmen'])
  ours = _train_outputs(out, dout)
  with np.load(fixtures_dir / 'outputs_train.npz') as ref:
    keys = [k for k in ref.files if not k.startswith('losses/') and k != '_aliases']
    worst = fixture_utils.compare(ours, dict(ref), fixture_utils.tolerances('outputs_train.npz'), keys)
  buffers = _buffers(cfg, {'generator': gen_vars, 'discriminator': variables['discriminator']}, state_gen,
                     state_dis, BASE_NETS + ('discriminator',))
  with np.load(fixtures_dir / 'state_after_train_step.npz') as ref:
    keys = [k for k in ref.files if k.startswith('buffers_after_forward/')]
    assert len(keys) == 405
    worst_buf = fixture_utils.compare(buffers, dict(ref), fixture_utils.tolerances('state_after_train_step.npz'),
                                      keys)
  print(f'train forward: worst {worst:.3f}; buffers: worst {worst_buf:.3f}')


def test_enhancer_training_forward_and_buffers(small_run, fixtures_dir):
  cfg, variables, _ = small_run
  batch = _training_batch(fixtures_dir)
  gen = BilayerGenerator(cfg, with_enhancer=True)
  # Stage 2: base networks frozen in eval mode; enhancer and discriminator in train mode.
  out, state_gen = jax.jit(lambda v, b: gen.apply(
      v, b, train=('texture_enhancer',), inf_apply_masks=True, enh_apply_masks=True, pred_source_data=True,
      enhance=True, mutable=['batch_stats', 'spectral']))(variables['generator'], batch)
  dout, state_dis = discriminator_passes(Discriminator(cfg), variables['discriminator'], out['target_imgs'],
                                         out['pred_enh_target_imgs'], batch['target_stickmen'])
  ours = _train_outputs(out, dout)
  ours.update(_buffers(cfg, variables, state_gen, state_dis, ('texture_enhancer', 'discriminator')))
  with np.load(fixtures_dir / 'outputs_enh_train.npz') as ref:
    keys = [k for k in ref.files
            if not k.startswith(('losses/', 'grad/', 'params_after_step/')) and k != '_aliases']
    worst = fixture_utils.compare(ours, dict(ref), fixture_utils.tolerances('outputs_enh_train.npz'), keys)
  print(f'enhancer-stage forward + buffers: worst {worst:.3f}')


def test_base_nets_untouched_in_eval_mode(small_run, fixtures_dir):
  """Networks in eval mode neither iterate spectral norm nor change BN statistics."""
  cfg, variables, _ = small_run
  batch = _training_batch(fixtures_dir)
  gen = BilayerGenerator(cfg, with_enhancer=True)
  _, state = jax.jit(lambda v, b: gen.apply(v, b, train=(), pred_source_data=True, enhance=True,
                                            mutable=['batch_stats', 'spectral']))(variables['generator'], batch)
  for collection in ('batch_stats', 'spectral'):
    jax.tree_util.tree_map(np.testing.assert_array_equal, state[collection], variables['generator'][collection])


def test_frozen_networks_pass_no_gradient(small_run, fixtures_dir):
  """As the original's no_grad: a network outside `train` gets and passes no gradient."""
  cfg, variables, _ = small_run
  batch = _training_batch(fixtures_dir)
  gen = BilayerGenerator(cfg, with_enhancer=False)
  gen_vars = {c: {n: t for n, t in tree.items() if n != 'texture_enhancer'}
              for c, tree in variables['generator'].items()}
  trained = ('texture_generator', 'inference_generator')

  def loss(params):
    out, _ = gen.apply({**gen_vars, 'params': params}, batch, train=trained, mutable=['batch_stats', 'spectral'])
    return out['pred_target_imgs'].sum() + out['pred_target_segs_logits'].sum()

  grads = jax.jit(jax.grad(loss))(gen_vars['params'])
  norms = {n: sum(float(np.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads[n])) for n in BASE_NETS}
  assert norms['identity_embedder'] == 0.0 and norms['keypoints_embedder'] == 0.0, norms
  assert norms['texture_generator'] > 0 and norms['inference_generator'] > 0, norms
