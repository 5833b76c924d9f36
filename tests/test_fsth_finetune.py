"""FSTH few-shot fine-tuning (`bilayer_jax.finetune`): initialisation as the paper, resumable, the
reference's fixed psi / w' by default and the paper's with train_adaptive, params the animator renders with
psi, the K-shot / fine-tuned evaluation protocol, and one-line errors of the command."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from bilayer_jax import config as config_lib
from bilayer_jax import evaluate
from bilayer_jax import families
from bilayer_jax import finetune
from bilayer_jax import model_io
from bilayer_jax.evaluators import protocol

import train_utils


@pytest.fixture(scope='module')
def person(demo_data_dir):
  """Three frames of the held-out video as preprocessed sources, and three other frames as targets."""
  video = protocol.list_videos(demo_data_dir, 'unseen', 'talking_heads/demo')[0]  # a person never trained on
  loader = protocol.FrameLoader(demo_data_dir, 'talking_heads/demo', train_utils.TINY_FSTH.image_size)
  frames = loader(video, protocol.select_frames(video.num_frames, 0, 3, num_sources=3), num_sources=3)
  return protocol.all_source_inputs(frames), frames


def _settings(**kwargs):
  return finetune.Settings(**{'steps': 4, 'checkpoint_every': 2, 'progress': False, **kwargs})


@pytest.fixture(scope='module')
def tuned(tiny_fsth_run, person, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ft')
  params = str(tiny_fsth_run[0] / 'params')
  return params, workdir, finetune.finetune(params, person[0], str(workdir), _settings())


def test_finetuning_writes_params_the_animator_renders_with_psi(tuned, person):
  params, workdir, summary = tuned
  assert summary['start_step'] == 0 and sorted(summary['losses']) == [1, 2, 3, 4] and not summary['preempted']
  cfg, variables, info = model_io.load_params(summary['params'])
  assert info['metadata']['finetuned'] and info['metadata']['num_frames'] == 3
  _, meta_vars, _ = model_io.load_params(params)
  generator, meta_generator = variables['generator']['params']['generator'], meta_vars['generator']['params'][
      'generator']
  # psi = P e_hat of the 3 frames, and left there (the reference's optimisers never see it).
  animator = families.animator_from_params(params)
  e_hat = np.asarray(animator.init_avatar(person[0]).embedding)
  np.testing.assert_allclose(generator['psi'], meta_generator['projection'] @ e_hat, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(variables['discriminator']['params']['w_prime'],
                             meta_vars['discriminator']['params']['w0'] + e_hat, rtol=1e-5, atol=1e-6)
  changed = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), generator['res1'], meta_generator['res1'])
  assert max(jax.tree_util.tree_leaves(changed)) > 0  # the convolutions were trained
  np.testing.assert_array_equal(variables['generator']['params']['embedder']['trunk']['res_down1']['conv_l1']['bias'],
                                meta_vars['generator']['params']['embedder']['trunk']['res_down1']['conv_l1']['bias'])
  tuned_animator = families.animator_from_params(summary['params'])
  assert tuned_animator.finetuned and not animator.finetuned
  out = tuned_animator.render(tuned_animator.init_avatar(person[0]), person[1]['target_poses'])
  assert out['image'].shape == person[1]['target_imgs'].shape and (out['mask'] == 1).all()


@pytest.mark.slow  # two more fine-tuning runs
def test_resumed_finetuning_gives_the_uninterrupted_losses(tiny_fsth_run, person, tuned, tmp_path):
  params, _, reference = tuned
  first = finetune.finetune(params, person[0], str(tmp_path), _settings(steps=2))
  assert sorted(first['losses']) == [1, 2]
  resumed = finetune.finetune(params, person[0], str(tmp_path), _settings())
  assert resumed['start_step'] == 2 and sorted(resumed['losses']) == [3, 4]
  for step in (3, 4):
    for name, value in reference['losses'][step].items():
      np.testing.assert_allclose(resumed['losses'][step][name], value, rtol=1e-5, atol=1e-6)


def test_train_adaptive_trains_psi(tiny_fsth_run, person, tmp_path):
  params = str(tiny_fsth_run[0] / 'params')
  summary = finetune.finetune(params, person[0], str(tmp_path), _settings(steps=2, train_adaptive=True))
  _, variables, info = model_io.load_params(summary['params'])
  animator = families.animator_from_params(params)
  e_hat = np.asarray(animator.init_avatar(person[0]).embedding)
  _, meta_vars, _ = model_io.load_params(params)
  psi = variables['generator']['params']['generator']['psi']
  assert info['metadata']['train_adaptive']
  assert np.abs(psi - meta_vars['generator']['params']['generator']['projection'] @ e_hat).max() > 1e-6


def test_finetuning_a_finetuned_or_bilayer_model_is_a_clear_error(tuned, params_dir, person, tmp_path):
  _, _, summary = tuned
  with pytest.raises(model_io.ParamsDirError, match='starts from meta-trained fsth params'):
    finetune.finetune(summary['params'], person[0], str(tmp_path / 'a'), _settings())
  with pytest.raises(model_io.ParamsDirError, match='bilayer'):
    finetune.finetune(params_dir, person[0], str(tmp_path / "b"), _settings())


def test_the_command_reports_bad_frames_in_one_line(tiny_fsth_run, tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  proc = subprocess.run([sys.executable, '-m', 'bilayer_jax.finetune', '--params', str(tiny_fsth_run[0] / 'params'),
                         '--frames', str(empty), '--workdir', str(tmp_path / 'w')], capture_output=True, text=True,
                        timeout=300, cwd=train_utils.REPO)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(f'error: --frames {empty}: the folder has no ')


@pytest.mark.slow  # fine-tunes once per held-out video inside the protocol
def test_evaluation_feed_forward_and_finetuned(tiny_fsth_run, demo_data_dir):
  """eval.num_source_frames = K and eval.finetune_steps: FF and FT rows of the same protocol."""
  workdir, _ = tiny_fsth_run
  config = config_lib.from_config_dict(train_utils.tiny_fsth_config(demo_data_dir))
  base = dict(metrics=('l1', 'psnr'), max_targets=3, cross_identity=False, num_source_frames=3)
  results = {}
  for name, steps in (('ff', 0), ('ft', 2)):
    ev = config_lib.EvalConfig(**base, finetune_steps=steps, name=name)
    results[name] = evaluate.evaluate(config_lib.dataclasses.replace(config, eval=ev), str(workdir), progress=False)
  for name, result in results.items():
    assert result['protocol']['num_source_frames'] == 3 and np.isfinite(result['self_reenactment']['summary']['psnr'])
  assert results['ft']['model']['finetune_steps'] == 2
  assert results['ft']['self_reenactment']['summary']['psnr'] != results['ff']['self_reenactment']['summary']['psnr']


@pytest.mark.slow  # two more fine-tuning runs
def test_preemption_checkpoints_and_a_rerun_resumes(tiny_fsth_run, person, tuned, tmp_path, monkeypatch):
  """SIGTERM (the guard's flag) after step 1: a checkpoint of step 1, no params; the same call resumes."""
  params, _, reference = tuned
  monkeypatch.setattr(finetune.checkpoints.PreemptionGuard, 'should_stop', lambda self, manager, step: step == 1)
  stopped = finetune.finetune(params, person[0], str(tmp_path), _settings())
  assert stopped['preempted'] and sorted(stopped['losses']) == [1] and 'params' not in stopped
  assert not (tmp_path / 'params').exists()
  monkeypatch.undo()
  resumed = finetune.finetune(params, person[0], str(tmp_path), _settings())
  assert resumed['start_step'] == 1 and (tmp_path / 'params').is_dir()
  np.testing.assert_allclose(resumed['losses'][4]['loss_g'], reference['losses'][4]['loss_g'], rtol=1e-5)
