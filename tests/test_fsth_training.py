"""FSTH meta-learning on the shared trainer: the per-video table (row-sparse Adam, only the batch's rows
change), the run end to end on the demo dataset (checkpoints, logs, evaluation, params, resume) and the
feed-forward animator built from its params."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bilayer_jax import config as config_lib
from bilayer_jax import export as export_cli
from bilayer_jax import families
from bilayer_jax import model_io
from bilayer_jax.families.fsth import objective
from bilayer_jax.families.fsth import setup
from bilayer_jax.families.fsth import training
from bilayer_jax.inference import fsth_animator
from bilayer_jax.inference import preprocess
from bilayer_jax.train import config_checks
from bilayer_jax.train import loop

import drive_utils  # pylint: disable=g-bad-import-order
import train_utils  # pylint: disable=g-bad-import-order  (puts the repo on sys.path)
from configs import fsth as fsth_configs  # pylint: disable=g-bad-import-order
from configs import fsth_demo

TINY = train_utils.TINY_FSTH
TESTS = pathlib.Path(__file__).parent


def tiny_config(data_dir, num_steps=4):
  return train_utils.tiny_fsth_config(data_dir, num_steps)


def test_row_adam_is_adam_per_row():
  """Each row of the table follows torch/optax Adam exactly, counting only the steps it was drawn in."""
  cfg = objective.MetaStepConfig()
  rng = np.random.default_rng(0)
  rows = jnp.asarray(rng.normal(size=(1, 8)), jnp.float32)
  moments = objective.init_row_moments(rows)
  optimizer = optax.adam(cfg.discriminator_lr, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps)
  expected, opt_state = rows[0], optimizer.init(rows[0])
  for _ in range(3):
    grads = jnp.asarray(rng.normal(size=(1, 8)), jnp.float32)
    rows, moments = objective.row_adam(cfg, grads, rows, moments)
    updates, opt_state = optimizer.update(grads[0], opt_state, expected)
    expected = optax.apply_updates(expected, updates)
  np.testing.assert_allclose(rows[0], expected, rtol=1e-6)
  assert int(moments['count'][0]) == 3


def _random_batch(rng, cfg, index):
  n, s = len(index), cfg.model.image_size
  image = lambda k: jnp.asarray(rng.uniform(-1, 1, (n, k, s, s, 3)), jnp.float32)
  return {'source_imgs': image(2), 'source_stickmen': image(2), 'target_imgs': image(1),
          'target_stickmen': image(1), 'video_index': jnp.asarray(index, jnp.int32)}


@pytest.fixture(scope='module')
def one_step():
  """(cfg, state, batch, state after one jitted train step, its metrics) of a 6-row table, videos 4 and 1."""
  cfg = objective.MetaStepConfig(model=TINY, vgg19_weight=0, vggface_weight=0, num_video_rows=6)
  batch = _random_batch(np.random.default_rng(1), cfg, [4, 1])
  state = jax.device_get(training.init_state(cfg, training.init_variables(cfg, 0, None)))
  after, metrics = jax.jit(lambda s, b: training.train_step(cfg, s, b, {}))(state, batch)
  return cfg, state, batch, jax.device_get(after), jax.device_get(metrics)


def test_a_step_changes_only_the_rows_of_the_batch_videos(one_step):
  cfg, state, _, after, metrics = one_step
  before_table, table = state['video_table'], after['video_table']
  drawn = np.isin(np.arange(6), [1, 4])
  np.testing.assert_array_equal(table['rows'][~drawn], before_table['rows'][~drawn])
  assert (table['count'] == drawn * cfg.discriminator_updates).all()
  assert not (table['mu'][~drawn]).any() and (table['mu'][drawn] != 0).any()
  assert (np.abs(table['rows'][drawn] - before_table['rows'][drawn]) > 1e-6).mean() > 0.5
  assert int(after['step']) == 1 and all(np.isfinite(float(v)) for v in metrics.values())


def test_the_step_is_the_parity_tested_iteration(one_step):
  """The trainer's step = objective.meta_iteration on the gathered rows (leaky ReLU on load), which the
  fixtures test: the same losses and networks after one step from the same state."""
  cfg, state, batch, after, metrics = one_step
  per_network = training._by_network(training.model_variables(state))  # pylint: disable=protected-access
  rows = jax.nn.leaky_relu(state['video_table']['rows'][batch['video_index']], TINY.leaky_slope)
  episode = {**training.episode(cfg, batch), 'video_rows': rows}
  out, reference_metrics = jax.jit(lambda v, e: objective.meta_step(cfg, v, {}, e))(per_network, episode)
  expected_vars, expected_rows = out['variables'], out['video_rows']
  np.testing.assert_allclose(metrics['loss/total'], reference_metrics['loss_g'], rtol=1e-6)
  np.testing.assert_allclose(after['video_table']['rows'][batch['video_index']], expected_rows, rtol=1e-6)
  for net in ('embedder', 'generator'):
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           after['params']['generator'][net], expected_vars[net]['params'])
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                         after['params']['discriminator'], expected_vars['discriminator']['params'])


def test_configs_build_and_check(demo_data_dir):
  for arg in ('', 'paper'):
    c = config_lib.from_config_dict(fsth_configs.get_config(arg))
    assert c.family == 'fsth' and isinstance(c.loss, config_lib.FSTHLossConfig)
    assert c.loss.target_in_sources == (arg != 'paper')
  config = config_lib.from_config_dict(tiny_config(demo_data_dir))
  config_checks.check(config)
  cfg = setup.step_config(config, 'meta')
  assert cfg.num_video_rows >= 1 and cfg.content_terms == ()
  with pytest.raises(config_lib.ConfigError, match=r'config.loss.match_weight=-1.0'):
    config_checks.check(dataclasses.replace(config, loss=dataclasses.replace(config.loss, match_weight=-1.0)))
  with pytest.raises(config_lib.ConfigError, match=r"config.stage='base'"):
    config_checks.check(dataclasses.replace(config, stage='base'))
  bad = fsth_demo.get_config()
  bad.loss.per_vgg19_weight = 1.0  # a bi-layer field: not in the fsth loss section
  with pytest.raises(config_lib.ConfigError, match=r'config.loss.per_vgg19_weight: no such field'):
    config_lib.from_config_dict(bad)


@pytest.fixture(scope='module')
def fsth_run(tiny_fsth_run):
  return tiny_fsth_run


def test_run_writes_checkpoints_logs_eval_and_params(fsth_run):
  workdir, summary = fsth_run
  assert summary['end_step'] == 4 and summary['source'] == 'initialised from scratch'
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == [2, 4]
  assert {'loss/total', 'loss/content', 'loss/adversarial', 'loss/match', 'loss/D_hinge1', 'loss/D_hinge2',
          'grad_norm/embedder'} <= set(summary['metrics'][4])
  assert all(np.isfinite(v) for step in summary['metrics'].values() for v in step.values())
  assert all(np.isfinite(summary['eval'][k]) for k in ('eval/l1', 'eval/psnr', 'eval/ssim'))
  events = list(workdir.glob('events.out.tfevents.*'))
  assert events and sum(e.stat().st_size for e in events) > 10_000  # scalars + image grids
  cfg, variables, info = model_io.load_params(workdir / 'params')
  assert info['family'] == 'fsth' and cfg == TINY and info['metadata']['step'] == 4
  assert model_io.networks_in(variables) == ['embedder', 'generator', 'discriminator']


@pytest.mark.slow  # two more training runs
def test_resume_gives_the_losses_of_an_uninterrupted_run(demo_data_dir, fsth_run, tmp_path):
  _, reference = fsth_run
  loop.train_and_evaluate(tiny_config(demo_data_dir, num_steps=2), str(tmp_path))
  resumed = loop.train_and_evaluate(tiny_config(demo_data_dir), str(tmp_path))
  assert resumed['start_step'] == 2
  for step in (3, 4):
    np.testing.assert_allclose(list(resumed['metrics'][step].values()),
                               list(reference['metrics'][step].values()), rtol=1e-5, atol=1e-6)


def test_animator_from_the_run_params(fsth_run):
  workdir, _ = fsth_run
  animator = families.animator_from_params(str(workdir / 'params'))
  assert isinstance(animator, fsth_animator.FSTHAnimator)
  rng = np.random.default_rng(0)
  s = TINY.image_size
  pose = np.clip(rng.normal(0, 0.3, (1, 1, 136)), -1, 1).astype(np.float32)
  source = preprocess.SourceInputs(imgs=rng.uniform(-1, 1, (1, 1, s, s, 3)).astype(np.float32),
                                   segs=np.ones((1, 1, s, s, 1), np.float32), stickmen=np.zeros((1, 1, s, s, 3)),
                                   poses=pose, crop=np.zeros((s, s, 3), np.uint8),
                                   landmarks=np.zeros((68, 2), np.float32))
  one = animator.init_avatar(source)
  two = animator.init_avatar([source, source])
  np.testing.assert_allclose(one.embedding, two.embedding, rtol=1e-6)  # the mean of equal embeddings
  out = animator.render(one, np.repeat(pose[0], 11, axis=0))
  assert out['image'].shape == (11, s, s, 3) and np.abs(out['image']).max() <= 1
  np.testing.assert_allclose(out['image'][0], out['image'][-1], atol=1e-6)  # the same pose, padded chunks
  frames = animator.composite(out)
  assert frames.dtype == np.uint8 and frames.shape == (11, s, s, 3)


@pytest.mark.slow  # 2 min: compiles the step for 1 and for 8 devices
def test_row_sharded_table_over_8_devices_equals_one_device(tmp_path):
  """The per-video table split by rows over a mesh of 8 (every batch drawing rows of every shard) gives
  the single-device steps: the same metrics, table (rows, moments, counts) and networks."""
  out = tmp_path / 'results.npz'
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
  env = {**os.environ, 'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, str(TESTS / 'fsth_sharded_driver.py'), str(out)], cwd=TESTS, env=env,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-4000:]
  results = np.load(out)
  assert str(results['sharded/table_spec']) == "P('data', None)"
  keys = [k[len('single/'):] for k in results.files if k.startswith('single/') and not k.endswith('table_spec')]
  assert any('/table/rows' in k for k in keys) and any(k.startswith('params') for k in keys)
  for key in keys:
    np.testing.assert_allclose(results[f'sharded/{key}'], results[f'single/{key}'], rtol=1e-4, atol=2e-5,
                               err_msg=key)


def test_drive_animates_a_photo_with_an_fsth_model(fsth_run, photo_file, tmp_path):
  """The drive command end to end with an FSTH params directory: photo -> embedding -> driven mp4."""
  workdir, _ = fsth_run
  drive_utils.check_drive_without_enhancer(str(workdir / 'params'), photo_file, tmp_path)


def test_tflite_export_of_a_person_matches_jax(fsth_run, photo_file, tmp_path):
  """The person's per-frame generator as TFLite (float): the same images as JAX on the driver's sketches."""
  workdir, _ = fsth_run
  result = export_cli.export(str(workdir / 'params'), 'tflite', str(tmp_path / 'person.tflite'), source=photo_file)
  assert result['checks']['frame']['psnr_db'] > 50 and result['checks']['frame']['max_abs_error'] < 1e-3
  contract = json.loads((tmp_path / 'person.json').read_text())
  assert contract['inputs'][0]['shape'] == [1, TINY.image_size, TINY.image_size, 3] and not contract['finetuned']


def test_torchscript_export_of_a_person_matches_jax(fsth_run, photo_file, tmp_path):
  workdir, _ = fsth_run
  result = export_cli.export(str(workdir / 'params'), 'torch', str(tmp_path / 'person.pt'), source=photo_file)
  assert result['checks']['frame']['max_abs_error'] < 1e-4 and result['files'] == [str(tmp_path / 'person.pt')]
