"""LPD per-frame export: the fold (BatchNorms, spectral norms and the identity folded in) renders what the
animator renders, feed-forward and fine-tuned; TFLite and TorchScript match it; the export CLI writes and
checks both for an lpd params directory."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bilayer_jax import export as export_cli
from bilayer_jax.inference import lpd_animator
from bilayer_jax.inference import lpd_export
from bilayer_jax.inference import lpd_torch
from bilayer_jax.inference import tflite_export
from bilayer_jax.models.lpd import networks
import train_utils

TINY = train_utils.TINY_LPD
S = TINY.image_size


@pytest.fixture(scope='module')
def crops():
  """The astronaut's face and its mirror image, plus noise, as (4, S, S, 3) crops in [-1, 1]."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  face = np.asarray(Image.fromarray(skimage.data.astronaut()[20:220, 120:320]).resize((S, S)), np.float32)
  face = face / 255 * 2 - 1
  noise = np.random.default_rng(1).uniform(-1, 1, (2, S, S, 3)).astype(np.float32)
  return np.concatenate([face[None], face[None, :, ::-1], noise])


@pytest.fixture(scope='module')
def variables(crops):
  """Freshly initialised tiny LPD networks (the pose encoder, not the identity encoder, which the per-frame
  network does not run). The BatchNorms get running statistics of the crops (train-mode passes; the initial
  (0, 1) leave the pose nearly input-independent) and random affines, so the fold has work, and the pose
  classifier a larger scale than its N(0, 0.01²) init, so the pose moves the frames visibly; the generator's
  constant varies as a trained one does."""
  rng = np.random.default_rng(0)
  embedder_net = networks.Embedder(TINY)
  embedder = embedder_net.init(jax.random.PRNGKey(0), jnp.zeros((1, S, S, 3)), method=embedder_net.pose)
  params = jax.tree_util.tree_map(lambda x: np.array(x, np.float32), embedder['params'])
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    if jax.tree_util.keystr(path).endswith("['scale']"):
      value *= rng.uniform(0.5, 2, value.shape).astype(np.float32)
    elif 'classifier' not in jax.tree_util.keystr(path) and jax.tree_util.keystr(path).endswith("['bias']"):
      value += rng.normal(0, 0.2, value.shape).astype(np.float32)
  classifier = params['pose_encoder']['classifier_1']
  classifier['kernel'] = rng.normal(0, 0.3, classifier['kernel'].shape).astype(np.float32)
  keep = jnp.ones((len(crops), TINY.mobilenet_last))
  update = jax.jit(lambda stats: embedder_net.apply({'params': params, 'batch_stats': stats}, (crops + 1) / 2, True,
                                                    keep, method=embedder_net.pose, mutable=['batch_stats'])[1])
  stats = embedder['batch_stats']
  for _ in range(40):  # running = 0.9 running + 0.1 batch: within 2% of the crops' statistics
    stats = update(stats)['batch_stats']
  generator = networks.Generator(TINY, finetuned=True).init(jax.random.PRNGKey(1), None, jnp.zeros((1, TINY.pose_dim)))
  generator_params = jax.tree_util.tree_map(lambda x: np.array(x, np.float32), generator['params'])
  constant = generator_params['constant']['constant']  # ones at init: a trained one varies (see the fold)
  constant += rng.normal(0, 0.5, constant.shape).astype(np.float32)
  return {'params': {'embedder': params, 'generator': generator_params},
          'batch_stats': {'embedder': stats}, 'spectral': {'generator': generator['spectral']}}


@pytest.fixture(scope='module')
def anim(variables):
  return lpd_animator.LPDAnimator(TINY, variables)


@pytest.fixture(scope='module')
def avatar():
  identity = np.random.default_rng(2).normal(0, 1, (1, TINY.identity_dim)).astype(np.float32)
  return lpd_animator.LPDAvatar(identity=jnp.asarray(identity), sources=[])


def _forward(arrays, crops):
  image, mask = jax.jit(lambda c: lpd_export.frame_forward(TINY, arrays, c))(crops)
  return {'image': np.asarray(image), 'mask': np.asarray(mask)}


def _max_error(out, reference):
  return max(float(np.abs(out[k] - reference[k]).max()) for k in ('image', 'mask'))


def test_fold_equals_the_animator_render(anim, avatar, crops):
  arrays = lpd_export.fold(anim, avatar)
  assert arrays['mlp0/kernel'].shape == (TINY.pose_dim, TINY.mlp_hidden)  # the identity rows are in the bias
  assert not any('bn' in k or k.endswith(('/u', '/v', '/scale', '/mean', '/var')) for k in arrays)
  reference = anim.render(avatar, crops)
  assert _max_error(_forward(arrays, crops), reference) < 2e-5
  # The pose comes from the crop: different crops, different frames (the fold did not freeze a pose).
  assert np.abs(reference['image'][0] - reference['image'][2]).max() > 1e-4


def test_fold_of_finetuned_params_bakes_the_generators_own_identity(variables, avatar, crops):
  finetuned = lpd_animator.LPDAnimator(TINY, variables, finetuned=True)
  own = np.asarray(variables['params']['generator']['identity_embedding'])
  np.testing.assert_array_equal(lpd_export.baked_identity(finetuned, avatar), own[0])
  reference = finetuned.render(avatar, crops)  # ignores the avatar's identity vector
  assert _max_error(_forward(lpd_export.fold(finetuned, avatar), crops), reference) < 2e-5
  feed_forward = lpd_animator.LPDAnimator(TINY, variables)
  assert np.abs(feed_forward.render(avatar, crops)['image'] - reference['image']).max() > 1e-4


def test_tflite_matches_jax_with_builtin_ops_only(anim, avatar, crops, tmp_path):
  path = lpd_export.export_tflite(anim, avatar, tmp_path / 'person.tflite', batch=2)
  runner = tflite_export.LiteRunner(path)
  assert not [op for op in runner.op_names() if 'FLEX' in op.upper() or 'CUSTOM' in op.upper()]
  outputs = [runner(crops[i:i + 2]) for i in (0, 2)]
  out = {'image': np.concatenate([o[0] for o in outputs]), 'mask': np.concatenate([o[1] for o in outputs])}
  assert _max_error(out, anim.render(avatar, crops)) < 1e-4
  contract = json.loads((tmp_path / 'person.json').read_text())
  assert contract['inputs'][0]['shape'] == [2, S, S, 3] and [o['name'] for o in contract['outputs']] == ['image',
                                                                                                        'mask']
  assert not contract['finetuned']


def test_tflite_quantised(anim, avatar, crops, tmp_path):
  reference = anim.render(avatar, crops)['image']
  for quantize, min_psnr in (('fp16', 50), ('dynamic', 25), ('int8', 20)):  # measured: 77, 49, 43 dB
    path = lpd_export.export_tflite(anim, avatar, tmp_path / f'{quantize}.tflite', quantize, representative_crops=crops)
    runner = tflite_export.LiteRunner(path)
    images = np.concatenate([runner(c[None])[0] for c in crops])
    assert export_cli.psnr(images, reference) > min_psnr, quantize
  with pytest.raises(tflite_export.ExportError, match='representative crops'):
    lpd_export.export_tflite(anim, avatar, tmp_path / 'int8.tflite', 'int8')


def test_torchscript_matches_jax(anim, avatar, crops, tmp_path):
  path = lpd_torch.write_torchscript(anim, avatar, tmp_path / 'person.pt')
  assert _max_error(lpd_torch.run_torchscript(path)(crops), anim.render(avatar, crops)) < 1e-4
  image, mask = torch.jit.load(str(path))(torch.zeros(1, 3, S, S))
  assert image.shape == (1, 3, S, S) and mask.shape == (1, 1, S, S)


def test_export_cli_writes_and_checks_both_formats(tiny_lpd_run, photo_file, tmp_path):
  params = str(tiny_lpd_run[0] / 'params')
  result = export_cli.export(params, 'tflite', str(tmp_path / 'person.tflite'), source=photo_file, batch=2)
  assert result['files'] == [str(tmp_path / 'person.tflite'), str(tmp_path / 'person.json')]
  assert result['checks']['frame']['max_abs_error'] < 1e-4 and result['checks']['frame']['psnr_db'] > 60
  result = export_cli.export(params, 'torch', str(tmp_path / 'person.pt'), source=photo_file)
  assert result['files'] == [str(tmp_path / 'person.pt')] and result['checks']['frame']['max_abs_error'] < 1e-4
  with pytest.raises(export_cli.UsageError, match='--with_init: the lpd family'):
    export_cli.export(params, 'tflite', str(tmp_path / 'x.tflite'), source=photo_file, with_init=True)


@pytest.mark.slow  # a fresh process: JAX, TensorFlow and the face detector start again
def test_export_command_prints_the_file_and_the_check(tiny_lpd_run, photo_file, tmp_path):
  out = tmp_path / 'cli.pt'
  proc = subprocess.run([sys.executable, '-m', 'bilayer_jax.export', '--params', str(tiny_lpd_run[0] / 'params'),
                         '--source', photo_file, '--format', 'torch', '--out', str(out)],
                        cwd=pathlib.Path(__file__).parents[1], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'wrote {out}' in proc.stdout and 'check frame vs JAX' in proc.stdout and out.is_file()
