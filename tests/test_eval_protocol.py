"""The evaluation protocol end to end: `run.py --mode=eval` after the demo training run, on imported original
weights, and the report files."""

import json
import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from bilayer_jax import evaluate as runner
from bilayer_jax import model_io
from bilayer_jax.evaluators import protocol
from bilayer_jax.families.bilayer import objective as step_lib
from bilayer_jax.families.bilayer import setup
from configs import demo as demo_config
from data_prep import demo

import train_utils

DEMO_STEPS = 120


@pytest.fixture(scope='module')
def data_dir(demo_data_dir):
  return demo_data_dir


def _run_py(*args, timeout=900, command=('run.py',)):
  cmd = [sys.executable, *command, '--config', str(train_utils.REPO / 'configs' / 'demo.py') + ':base', *args]
  proc = subprocess.run(cmd, cwd=train_utils.REPO, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


@pytest.fixture(scope='module')
def demo_eval(data_dir, tmp_path_factory):
  """The README's demo training (base stage, shortened) then `run.py --mode=eval` on its workdir."""
  workdir = tmp_path_factory.mktemp('demo_run')
  common = [f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', '--config.eval.max_targets=8']
  _run_py(*common, f'--config.num_steps={DEMO_STEPS}', '--config.log.eval_every_steps=1000',
          '--config.log.image_every_steps=1000', f'--config.log.checkpoint_every_steps={DEMO_STEPS}')
  _run_py(*common, '--mode=eval', '--config.eval.name=trained')
  return workdir


def _finite_summary(summary, names):
  for name in names:
    assert math.isfinite(summary[name]), (name, summary)


@pytest.mark.slow
def test_demo_evaluation_is_finite_and_ranks_training_above_initialisation(demo_eval, data_dir, tmp_path):
  out = demo_eval / 'eval' / 'trained'
  results = json.loads((out / 'results.json').read_text())
  assert (out / 'results.md').read_text().startswith('# Evaluation:')
  assert (out / 'examples.png').stat().st_size > 0
  assert 'params' in results['model']['evaluated'] and f'step {DEMO_STEPS}' in results['model']['evaluated']
  trained = results['self_reenactment']['summary']
  # Two held-out videos (two people), 8 targets each.
  assert trained['frames'] == 16 and results['protocol']['max_targets'] == 8
  _finite_summary(trained, ('l1', 'psnr', 'ssim', 'lpips', 'csim_dlib', 'nme_dlib_fail_rate', 'fid'))
  assert trained['fid_frames'] == 16 and trained['fid'] > 0
  for baseline in results['baselines'].values():
    _finite_summary(baseline, ('l1', 'psnr', 'ssim'))
  assert 0 <= trained['ssim'] <= 1 and 0 <= trained['lpips'] and -1 <= trained['csim_dlib'] <= 1
  cross = results['cross_reenactment']['summary']
  assert cross['frames'] == 16 and -1 <= cross['csim_dlib'] <= 1
  pose = results['pose_identity']  # on by default (eval.pose_identity='dlib')
  assert pose['people'] == 2 and pose['landmark_backend'] == 'dlib' and 'pose_error_dlib' in pose

  # The same protocol on the untrained initialisation of the same architecture: training must show.
  config = demo_config.get_config('base')
  config.data.data_dir = data_dir
  config.eval.max_targets = 8
  config.eval.metrics = ('l1', 'psnr', 'ssim', 'lpips')
  cfg = setup.step_config(config, 'base')
  s, n = config.model.image_size, config.model.pse_in_channels
  frames = lambda c: jnp.zeros((1, 1, s, s, c))
  dummy = {'source_imgs': frames(3), 'source_segs': frames(1), 'source_stickmen': frames(3),
           'source_poses': jnp.zeros((1, 1, n)), 'target_imgs': frames(3), 'target_segs': frames(1),
           'target_stickmen': frames(3), 'target_poses': jnp.zeros((1, 1, n))}
  variables = step_lib.init_variables(cfg, 0, step_lib.variable_shapes(cfg, dummy))
  model_io.save_params(tmp_path / 'init', cfg.model, {'generator': variables['generator']})
  config.eval.params = str(tmp_path / 'init')
  untrained = runner.evaluate(config, str(tmp_path), progress=False)['self_reenactment']['summary']
  assert trained['psnr'] > untrained['psnr'] + 1 and trained['lpips'] < untrained['lpips']
  assert trained['l1'] < untrained['l1']


def test_eval_of_the_originals_run_directories(data_dir, enh_run_dir, fixtures_dir, tmp_path):
  """Imported official-layout weights (the fixtures' base + enhancer runs) through `python -m
  bilayer_jax.evaluate` (what `run.py --mode=eval` runs)."""
  proc = _run_py(f'--workdir={tmp_path}', f'--config.data.data_dir={data_dir}',
                 f'--config.eval.params={fixtures_dir}', '--config.eval.original_epoch=1',
                 f'--config.eval.original_enh_run_dir={enh_run_dir}', '--config.eval.original_enh_epoch=1',
                 '--config.eval.max_targets=3', '--config.eval.metrics=psnr,ssim,csim_dlib,nme_dlib',
                 '--config.eval.name=original', command=('-m', 'bilayer_jax.evaluate'))
  results = json.loads((tmp_path / 'eval' / 'original' / 'results.json').read_text())
  assert results['model'] == {'evaluated': f'original run {fixtures_dir} epoch 1', 'enhanced': True}
  summary = results['self_reenactment']['summary']
  assert summary['frames'] == 6 and sorted(k for k in summary if not k.startswith('nme')) == [  # 2 videos x 3
      'csim_dlib', 'frames', 'psnr', 'ssim']
  _finite_summary(summary, ('psnr', 'ssim', 'csim_dlib'))
  assert 'self-reenactment' in proc.stdout


def test_protocol_lists_videos_in_a_fixed_order_and_decodes_like_training(data_dir):
  videos = protocol.list_videos(data_dir, 'test', demo.DEMO_DATASET_NAME)
  assert [(v.person_id, v.video_id, v.num_frames) for v in videos] == [
      ('pexels_woman', 'frames_376_471', 32), ('carphone', 'frames_096_119', 24)]
  assert protocol.list_videos(data_dir, 'test', demo.DEMO_DATASET_NAME) == videos
  loader = protocol.FrameLoader(data_dir, demo.DEMO_DATASET_NAME, 64)
  frames = loader(videos[1], protocol.select_frames(24, 0, 4))
  assert frames['source_imgs'].shape == (1, 64, 64, 3) and frames['target_imgs'].shape == (4, 64, 64, 3)
  assert frames['target_poses'].shape == (4, 136) and np.abs(frames['target_poses']).max() <= 1
  np.testing.assert_allclose(protocol.pixel_keypoints(frames['source_poses'], 64)[0, 0],
                             (frames['source_poses'][0, :2] + 1) * 32)


def test_bad_eval_settings_fail_clearly(data_dir, tmp_path):
  config = demo_config.get_config('base')
  config.data.data_dir = data_dir
  with pytest.raises(model_io.ParamsDirError, match='nothing to evaluate'):
    runner.evaluate(config, str(tmp_path), progress=False)
  config.eval.mask = 'everything'
  with pytest.raises(ValueError, match="eval.mask='everything'"):
    runner.evaluate(config, str(tmp_path), progress=False)
  config.eval.mask = 'ground_truth'
  config.eval.params = str(tmp_path)
  with pytest.raises(model_io.ParamsDirError, match='no config.json'):
    runner.evaluate(config, str(tmp_path), progress=False)


def test_cross_identity_and_per_video_results(data_dir, small_run):
  """The demo's two held-out videos (two people): self- and cross-reenactment rows for both, and the
  markdown report."""
  from bilayer_jax.evaluators import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from bilayer_jax.evaluators import report  # pylint: disable=g-import-not-at-top
  from bilayer_jax.inference import animator as animator_lib  # pylint: disable=g-import-not-at-top
  cfg, variables, _ = small_run
  animator = animator_lib.Animator(cfg, variables['generator'])
  evaluator = metrics_lib.FrameEvaluator(('psnr', 'csim_dlib', 'nme_dlib'))
  settings = protocol.Settings(max_targets=3, enhance=False, grid_rows=2, pose_identity='dlib')
  results = protocol.evaluate(animator, evaluator, data_dir, 'test', demo.DEMO_DATASET_NAME, settings,
                              progress=False)
  own = results['self_reenactment']
  assert own['summary']['frames'] == 6 and [v['person_id'] for v in own['videos']] == ['pexels_woman', 'carphone']
  assert all(v['frames'] == 3 for v in own['videos'])
  np.testing.assert_allclose(own['summary']['psnr'], np.mean([v['psnr'] for v in own['videos']]), rtol=1e-6)
  cross = results['cross_reenactment']['summary']
  assert cross['frames'] == 6 and sorted(cross) == ['csim_dlib', 'frames', 'nme_dlib', 'nme_dlib_fail_rate',
                                                    'nme_dlib_frames']
  assert -1 <= cross['csim_dlib'] <= 1 and 0 <= cross['nme_dlib_fail_rate'] <= 1
  assert results['grid'].shape == (2 * 64, 3 * 64, 3)
  pose = results['pose_identity']  # the LPD paper's metric on the same renders, pooled per person
  assert pose['people'] == 2 and pose['pose_error_dlib_frames'] + pose['pose_error_dlib_skipped'] <= 6
  assert pose['pose_error_dlib_frames'] == 0 or (pose['pose_error_dlib'] > 0 and pose['pose_error_fit_dlib'] > 0)
  assert 'identity_error_dlib' in pose or pose['identity_error_skipped'].startswith('pose/identity error: no face')
  results.pop('grid')
  text = report.markdown(results)
  assert '| pexels_woman |' in text and 'CSIM to the source photo' in text and 'Pose / identity errors' in text


def test_unknown_split_names_the_dataset_and_its_splits(data_dir):
  with pytest.raises(ValueError, match=r"has no split 'validation' \(it has \['test', 'train', 'unseen'\]\)"):
    protocol.list_videos(data_dir, 'validation', demo.DEMO_DATASET_NAME)


def test_one_checkpoint_of_a_run_by_its_step(tiny_base_run, data_dir, tmp_path):
  """eval.checkpoint_step: that checkpoint of WORKDIR (learning curves), a one-line error for a missing step."""
  workdir, _ = tiny_base_run
  config = train_utils.tiny_config(data_dir)
  config.eval.metrics = ('psnr',)
  config.eval.max_targets = 2
  config.eval.pose_identity = ''
  config.eval.checkpoint_step = 2
  config.eval.name = 'step2'
  results = runner.evaluate(config, str(workdir), progress=False)
  assert results['model']['evaluated'].endswith('checkpoint step 2')
  assert np.isfinite(results['self_reenactment']['summary']['psnr'])
  config.eval.checkpoint_step = 3
  with pytest.raises(model_io.ParamsDirError, match=r'eval.checkpoint_step=3: no such checkpoint .* \[2, 4\]'):
    runner.evaluate(config, str(workdir), progress=False)
