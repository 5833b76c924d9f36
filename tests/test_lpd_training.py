"""The LPD family on the shared trainer: the step is the parity-tested iteration, the projection table moves
as one spectrally normalised matrix, configs build and check, a tiny run trains, checkpoints, evaluates,
writes params the animator renders from, and resumes to the same losses; the input pipeline's pose frame."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilayer_jax import config as config_lib
from bilayer_jax import errors
from bilayer_jax import families
from bilayer_jax import model_io
from bilayer_jax.data import input_pipeline
from bilayer_jax.families.lpd import objective
from bilayer_jax.families.lpd import setup
from bilayer_jax.families.lpd import training
from bilayer_jax.inference import lpd_animator
from bilayer_jax.inference import preprocess
from bilayer_jax.train import config_checks
from bilayer_jax.train import loop
from configs import lpd as lpd_configs

import drive_utils
import train_utils

TINY = train_utils.TINY_LPD
TESTS = pathlib.Path(__file__).parent


def _random_batch(rng, cfg, index):
  n, s = len(index), cfg.model.image_size
  image = lambda k: jnp.asarray(rng.uniform(-1, 1, (n, k, s, s, 3)), jnp.float32)
  return {'source_imgs': image(2), 'target_imgs': image(1), 'pose_imgs': image(1),
          'target_segs': jnp.asarray(rng.uniform(0, 1, (n, 1, s, s, 1)), jnp.float32),
          'video_index': jnp.asarray(index, jnp.int32)}


@pytest.fixture(scope='module')
def one_step():
  """(cfg, state, batch, state after one jitted train step, its metrics) of a 6-row table, videos 4 and 1."""
  cfg = objective.StepConfig(model=TINY, perceptual_weight=0, vggface_weight=0, num_video_rows=6, seed=3)
  batch = _random_batch(np.random.default_rng(1), cfg, [4, 1])
  state = jax.device_get(training.init_state(cfg, training.init_variables(cfg, 0, None)))
  after, metrics = jax.jit(lambda s, b: training.train_step(cfg, s, b, {}))(state, batch)
  return cfg, state, batch, jax.device_get(after), jax.device_get(metrics)


def test_the_step_is_the_parity_tested_iteration(one_step):
  """The trainer's step = objective.iteration (which the fixtures test) on the same variables, batch and
  dropout draw: the same losses, networks, table and EMA after one step."""
  cfg, state, batch, after, metrics = one_step
  params, others = training._unpack(state)  # pylint: disable=protected-access
  ema = training._by_network(state['ema'])  # pylint: disable=protected-access
  opt_state = {**state['opt_state'], 'table': state['video_table']['opt']}
  rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0)
  new_params, _, new_ema, _, out = jax.jit(lambda p, o, e, s, b: objective.iteration(
      cfg, p, o, e, s, {}, training.episode(b), rng=rng))(params, others, ema, opt_state, batch)
  np.testing.assert_allclose(metrics['loss/loss_g'], out['loss_g'], rtol=1e-6)
  np.testing.assert_allclose(metrics['loss/loss_d'], out['loss_d'], rtol=1e-6)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  for net in training.GENERATOR_SIDE:
    jax.tree_util.tree_map(close, after['params']['generator'][net], new_params[net])
    jax.tree_util.tree_map(close, after['ema']['params'][net], new_ema[net]['params'])
  jax.tree_util.tree_map(close, after['params']['discriminator'], new_params['discriminator'])
  close(after['video_table']['embedding'], new_params['table']['embedding'])


def test_the_whole_table_moves_and_the_ema_follows(one_step):
  cfg, state, _, after, metrics = one_step
  before, table = state['video_table'], after['video_table']
  moved = np.abs(table['embedding'] - before['embedding']).max(axis=1)
  assert (moved > 1e-6).all(), moved  # every row: the table is normalised as one matrix
  assert not np.allclose(table['u'], before['u'])
  ema, params = after['ema']['params']['generator'], after['params']['generator']['generator']
  start = state['params']['generator']['generator']
  jax.tree_util.tree_map(
      lambda e, p, s: np.testing.assert_allclose(e, cfg.ema_decay * s + (1 - cfg.ema_decay) * p, rtol=1e-5,
                                                 atol=1e-7), ema, params, start)
  assert int(after['step']) == 1 and all(np.isfinite(float(v)) for v in metrics.values())


def test_configs_build_and_check(demo_data_dir):
  c = config_lib.from_config_dict(lpd_configs.get_config())
  assert c.family == 'lpd' and isinstance(c.loss, config_lib.LPDLossConfig) and c.batch_size == 8
  config = config_lib.from_config_dict(train_utils.tiny_lpd_config(demo_data_dir))
  config_checks.check(config)
  cfg = setup.step_config(config, 'meta')
  assert cfg.num_video_rows >= 1 and cfg.perceptual_terms == () and cfg.model == TINY
  finetune = setup.finetune_config(config)
  assert (finetune.stage, finetune.optimizer, finetune.generator_lr, finetune.ema_decay) == (
      'finetune', 'radam', 5e-4, 0.972)
  bad_dice = dataclasses.replace(config, loss=dataclasses.replace(config.loss, dice_real_channels=2))
  with pytest.raises(config_lib.ConfigError, match=r'config.loss.dice_real_channels=2'):
    config_checks.check(bad_dice)
  bad_optimizer = dataclasses.replace(config, optim=dataclasses.replace(config.optim, optimizer='sgd'))
  with pytest.raises(config_lib.ConfigError, match=r"config.optim.optimizer='sgd'"):
    config_checks.check(bad_optimizer)
  other_family = train_utils.tiny_lpd_config(demo_data_dir)
  other_family.loss.match_weight = 1.0  # an FSTH field: not in the lpd loss section
  with pytest.raises(config_lib.ConfigError, match=r'config.loss.match_weight: no such field'):
    config_lib.from_config_dict(other_family)


def test_pose_frame_is_augmented_on_the_training_split_only(demo_data_dir):
  config = config_lib.from_config_dict(train_utils.tiny_lpd_config(demo_data_dir))
  training_spec = families.get('lpd').training

  def examples(split, count=8):
    ds = input_pipeline.create_dataset(
        str(demo_data_dir), split, image_size=64, num_source_frames=2, num_target_frames=1, batch_size=2,
        seed=0, shuffle=False, repeat=True, dataset_name=config.data.name, with_video_index=True,
        example_transform=training_spec.example_transform(config, split == config.data.train_split))
    batches = [b for _, b in zip(range(count // 2), ds.as_numpy_iterator())]
    return {k: np.concatenate([b[k] for b in batches]) for k in ('pose_imgs', 'target_imgs')}

  train, held_out = examples(config.data.train_split), examples(config.data.eval_split)
  assert train['pose_imgs'].shape == train['target_imgs'].shape
  differs = [not np.array_equal(p, t) for p, t in zip(train['pose_imgs'], train['target_imgs'])]
  assert sum(differs) >= 4, differs  # P(no op, no scale) = 1/12 per example
  np.testing.assert_array_equal(held_out['pose_imgs'], held_out['target_imgs'])


@pytest.fixture(scope='module')
def lpd_run(tiny_lpd_run):
  return tiny_lpd_run


def test_run_writes_checkpoints_logs_eval_and_params(lpd_run):
  workdir, summary = lpd_run
  assert summary['end_step'] == 4 and summary['source'] == 'initialised from scratch'
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == [2, 4]
  assert {'loss/loss_g', 'loss/loss_d', 'loss/adversarial_G', 'loss/feature_matching', 'loss/segmentation_dice',
          'loss/embedding_matching', 'grad_norm/table'} <= set(summary['metrics'][4])
  assert all(np.isfinite(v) for step in summary['metrics'].values() for v in step.values())
  assert all(np.isfinite(summary['eval'][k]) for k in ('eval/l1', 'eval/psnr', 'eval/ssim'))
  events = list(workdir.glob('events.out.tfevents.*'))
  assert events and sum(e.stat().st_size for e in events) > 10_000  # scalars + image grids
  cfg, variables, info = model_io.load_params(workdir / 'params')
  assert info['family'] == 'lpd' and cfg == TINY and info['metadata']['step'] == 4
  assert model_io.networks_in(variables) == ['embedder', 'generator', 'discriminator']


@pytest.mark.slow  # two more training runs
def test_resume_gives_the_losses_of_an_uninterrupted_run(demo_data_dir, lpd_run, tmp_path):
  _, reference = lpd_run
  loop.train_and_evaluate(train_utils.tiny_lpd_config(demo_data_dir, num_steps=2), str(tmp_path))
  resumed = loop.train_and_evaluate(train_utils.tiny_lpd_config(demo_data_dir), str(tmp_path))
  assert resumed['start_step'] == 2
  for step in (3, 4):
    np.testing.assert_allclose(list(resumed['metrics'][step].values()),
                               list(reference['metrics'][step].values()), rtol=1e-5, atol=1e-6)


def test_animator_from_the_run_params(lpd_run):
  workdir, _ = lpd_run
  animator = families.animator_from_params(str(workdir / 'params'))
  assert isinstance(animator, lpd_animator.LPDAnimator)
  rng = np.random.default_rng(0)
  s = TINY.image_size
  photo = rng.uniform(-1, 1, (1, 1, s, s, 3)).astype(np.float32)
  source = preprocess.SourceInputs(imgs=photo, segs=np.ones((1, 1, s, s, 1), np.float32),
                                   stickmen=np.zeros((1, 1, s, s, 3)), poses=np.zeros((1, 1, 136), np.float32),
                                   crop=np.zeros((s, s, 3), np.uint8), landmarks=np.zeros((68, 2), np.float32))
  one = animator.init_avatar(source)
  two = animator.init_avatar([source, source])
  np.testing.assert_allclose(one.identity, two.identity, rtol=1e-5, atol=1e-7)  # the mean of equal vectors
  crops = np.repeat(photo[0], 11, axis=0)
  out = animator.render(one, crops)
  assert out['image'].shape == (11, s, s, 3) and out['mask'].shape == (11, s, s, 1)
  assert np.abs(out['image']).max() <= 1 and 0 <= out['mask'].min() and out['mask'].max() <= 1
  np.testing.assert_allclose(out['image'][0], out['image'][-1], atol=1e-6)  # the same crop, padded chunks
  other = animator.render(one, rng.uniform(-1, 1, (1, s, s, 3)).astype(np.float32))
  # The pose comes from the crop (after 4 steps its effect is small: the classifier starts at N(0, 0.01²)).
  assert np.abs(other['image'][0] - out['image'][0]).max() > 1e-7
  frames = animator.composite(out)
  assert frames.dtype == np.uint8 and frames.shape == (11, s, s, 3)


@pytest.mark.slow  # ~3 min: compiles the step for 1 and for 8 devices
def test_row_sharded_table_over_8_devices_equals_one_device(tmp_path):
  """The projection table split by rows over a mesh of 8 (its sigma, gradient and Adam over all shards),
  with BatchNorm statistics over the global batch, gives the single-device steps (float64, see the driver;
  even there the embedder's gradient norm moves by 1.7e-6 relative between the two reduction orders at step 2,
  measured 2026-12-07: BatchNorm over small batches amplifies rounding)."""
  out = tmp_path / 'results.npz'
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
  env = {**os.environ, 'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, str(TESTS / 'lpd_sharded_driver.py'), str(out)], cwd=TESTS, env=env,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-4000:]
  results = np.load(out)
  assert str(results['sharded/table_spec']) == "P('data', None)"
  keys = [k[len('single/'):] for k in results.files if k.startswith('single/') and not k.endswith('table_spec')]
  assert any('/table/embedding' in k for k in keys) and any(k.startswith('stats') for k in keys)
  for key in keys:
    # Parameters and the statistics they give: 1/50 of one Adam step (lr 5e-5); measured: single elements of the
    # identity encoder differ by up to 1.9e-7 after two steps, the rest far less (see the docstring).
    atol = 1e-6 if key.startswith(('params', 'stats')) else 1e-8
    np.testing.assert_allclose(results[f'sharded/{key}'], results[f'single/{key}'], rtol=1e-5, atol=atol,
                               err_msg=key)


def test_evaluation_protocol_with_lpd_params(lpd_run, demo_data_dir, tmp_path):
  """`bilayer_jax.evaluate` (what `run.py --mode=eval` runs) on LPD params: the pose encoder reads the held-out
  frames themselves; self- and cross-identity metrics, the pose/identity errors and the report."""
  from bilayer_jax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  workdir, _ = lpd_run
  config = train_utils.tiny_lpd_config(demo_data_dir)
  config.eval.params = str(workdir / 'params')
  config.eval.max_targets = 3
  config.eval.metrics = ('psnr', 'ssim', 'csim_dlib')
  config.eval.name = 'lpd'
  results = evaluate_lib.evaluate(config, str(tmp_path), progress=False)
  own = results['self_reenactment']['summary']
  assert own['frames'] == 6 and np.isfinite(own['psnr']) and 'source_copy' in results['baselines']
  assert results['cross_reenactment']['summary']['frames'] == 6
  assert results['pose_identity']['people'] == 2 and 'pose_error_dlib' in results['pose_identity']
  text = (tmp_path / 'eval' / 'lpd' / 'results.md').read_text()
  assert 'Pose / identity errors' in text and '| pexels_woman |' in text
  config.eval.pose_identity = 'arcface'
  with pytest.raises(errors.InvalidArgumentError, match='add csim_arcface to eval.metrics'):
    evaluate_lib.evaluate(config, str(tmp_path), progress=False)


def test_drive_animates_a_photo_with_an_lpd_model(lpd_run, photo_file, tmp_path):
  """The drive command end to end with an LPD params directory: photo -> identity vector -> mp4 posed by the
  driver's face crops."""
  workdir, _ = lpd_run
  drive_utils.check_drive_without_enhancer(str(workdir / 'params'), photo_file, tmp_path)
