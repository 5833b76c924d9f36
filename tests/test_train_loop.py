"""The training loop end to end on the demo dataset: checkpoints, resume, preemption, NaN guard, logs."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bilayer_jax import errors
from bilayer_jax import model_io
from bilayer_jax.train import loop

import train_utils


@pytest.fixture(scope='module')
def data_dir(demo_data_dir):
  return demo_data_dir


@pytest.fixture(scope='module')
def uninterrupted(tiny_base_run):
  return tiny_base_run


def _steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir() if p.name.isdigit())


def test_run_writes_checkpoints_logs_and_params(uninterrupted):
  workdir, summary = uninterrupted
  assert summary['source'] == 'initialised from scratch' and summary['end_step'] == 4
  assert _steps(workdir) == [2, 4]
  assert all(np.isfinite(v).all() for losses in summary['metrics'].values() for v in losses.values())
  assert {'loss/D_ADV', 'loss/G_ADV', 'loss/G_FM', 'loss/G_L1', 'loss/G_BCE', 'loss/total'} <= set(
      summary['metrics'][4])
  for key in ('eval/l1', 'eval/psnr', 'eval/ssim'):
    assert np.isfinite(summary['eval'][key])
  events = list(pathlib.Path(workdir).glob('events.out.tfevents.*'))
  assert events and sum(e.stat().st_size for e in events) > 10_000  # scalars + image grids
  cfg, variables, info = model_io.load_params(workdir / 'params')
  assert info['metadata']['step'] == 4 and cfg.image_size == 64
  assert set(model_io.networks_in(variables)) >= {'identity_embedder', 'inference_generator', 'discriminator'}


@pytest.mark.slow  # 33 s: two training runs
def test_resume_gives_the_losses_of_an_uninterrupted_run(data_dir, uninterrupted, tmp_path):
  _, reference = uninterrupted
  first = loop.train_and_evaluate(train_utils.tiny_config(data_dir, num_steps=2), str(tmp_path))
  assert first['end_step'] == 2 and _steps(tmp_path) == [2]
  resumed = loop.train_and_evaluate(train_utils.tiny_config(data_dir, num_steps=4), str(tmp_path))
  assert resumed['source'] == 'resumed from this workdir at step 2' and resumed['start_step'] == 2
  for step in (1, 2):
    np.testing.assert_allclose(list(first['metrics'][step].values()),
                               list(reference['metrics'][step].values()), rtol=1e-6)
  for step in (3, 4):
    np.testing.assert_allclose(list(resumed['metrics'][step].values()),
                               list(reference['metrics'][step].values()), rtol=1e-5, atol=1e-6)


def test_partially_written_checkpoint_is_never_restored(data_dir, uninterrupted, tmp_path):
  src, _ = uninterrupted
  shutil.copytree(src / 'checkpoints', tmp_path / 'checkpoints')
  shutil.rmtree(tmp_path / 'checkpoints' / '4')
  # What an interrupted asynchronous save leaves behind: orbax's temporary directory for step 6.
  partial = tmp_path / 'checkpoints' / '6.orbax-checkpoint-tmp-1234'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'garbage').write_bytes(b'\0' * 100)
  summary = loop.train_and_evaluate(train_utils.tiny_config(data_dir, num_steps=3), str(tmp_path))
  assert summary['source'] == 'resumed from this workdir at step 2'


def test_nonfinite_loss_stops_without_checkpoint(data_dir, tmp_path):
  config = train_utils.tiny_config(data_dir, num_steps=4)
  config.optim.lrs.inference_generator = 1e30  # blows the parameters up in the first step
  with pytest.raises(loop.NonFiniteError, match='non-finite'):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not _steps(tmp_path) and not (tmp_path / 'params').exists()


def _run_py(workdir, data_dir, num_steps, checkpoint_every):
  return [sys.executable, str(train_utils.REPO / 'run.py'), '--config',
          str(train_utils.REPO / 'configs' / 'demo.py') + ':base', '--workdir', str(workdir),
          f'--config.data.data_dir={data_dir}', '--config.batch_size=2', f'--config.num_steps={num_steps}',
          '--config.loss.per_vgg16_lpips_weight=0', '--config.log.every_steps=1',
          f'--config.log.checkpoint_every_steps={checkpoint_every}', '--config.log.eval_every_steps=1000',
          '--config.log.image_every_steps=1000', '--config.standing_stats.num_batches=1']


@pytest.mark.slow
def test_sigterm_checkpoints_and_resumes(data_dir, tmp_path):
  """SIGTERM mid-run: the run saves the step it is at and exits 75 (preempted); a restart resumes from there."""
  workdir = tmp_path / 'run'
  env = {**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
  proc = subprocess.Popen(_run_py(workdir, data_dir, 1000, 1000), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  log = []
  deadline = time.time() + 600
  for line in proc.stdout:  # wait until training steps are being logged
    log.append(line)
    if '] loss/total' in line or 'loss/total=' in line:
      break
    assert time.time() < deadline, ''.join(log[-30:])
  proc.send_signal(signal.SIGTERM)
  log.extend(proc.stdout)
  text = ''.join(log)
  assert proc.wait(timeout=300) == errors.EXIT_PREEMPTED, text[-3000:]
  assert 'preempted at step' in text, text[-3000:]
  steps = _steps(workdir)
  assert len(steps) == 1 and 0 < steps[0] < 1000, steps
  resume = subprocess.run(_run_py(workdir, data_dir, steps[0] + 1, 1000), env=env, capture_output=True,
                          text=True, timeout=600)
  assert resume.returncode == 0, resume.stderr[-3000:]
  assert f'resumed from this workdir at step {steps[0]}' in resume.stderr
  assert _steps(workdir)[-1] == steps[0] + 1


@pytest.mark.slow  # 31 s: both stages with their compiles
def test_both_stages_base_then_enhancer(data_dir, tmp_path):
  """stage 'both': the enhancer stage starts from the base stage's params and trains the enhancer only."""
  config = train_utils.tiny_config(data_dir, stage='both', num_steps=2)
  config.loss.per_vgg16_lpips_weight = 10.0  # the demo's perceptual loss, on the enhanced image here
  summary = loop.train_and_evaluate(config, str(tmp_path))
  assert summary['source'].startswith('initialised ') and summary['source'].endswith(str(tmp_path / 'base/params'))
  assert summary['end_step'] == 2 and 'loss/G_VGG16' in summary['metrics'][2]
  trained = {k.split('/')[1] for k in summary['metrics'][2] if k.startswith('grad_norm/')}
  assert trained == {'texture_enhancer', 'discriminator'}
  _, base, _ = model_io.load_params(tmp_path / 'base' / 'params')
  _, enhanced, _ = model_io.load_params(tmp_path / 'enhancer' / 'params')
  assert 'texture_enhancer' in enhanced['generator']['params']
  for net in ('identity_embedder', 'inference_generator'):  # frozen in stage 2
    for a, b in zip(jax.tree_util.tree_leaves(base['generator']['params'][net]),
                    jax.tree_util.tree_leaves(enhanced['generator']['params'][net])):
      np.testing.assert_array_equal(a, b)


def test_init_from_another_architecture_names_the_key(data_dir, uninterrupted, tmp_path):
  """init_from a params directory of other widths: a clear error naming the directory, network and key."""
  src, _ = uninterrupted
  config = train_utils.tiny_config(data_dir, num_steps=1)
  config.init_from = str(src / 'params')
  config.model.pse_num_channels = 16  # the params were trained with 32
  with pytest.raises(ValueError, match=r'params: generator/params/keypoints_embedder.*expected shape'):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'params').exists()
