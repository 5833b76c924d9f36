"""Faults a real run meets: corrupt checkpoints fall back, preemption ends a two-stage run with exit 75."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bilayer_jax import config as config_lib
from bilayer_jax import errors
from bilayer_jax import families
from bilayer_jax.train import checkpoints
from bilayer_jax.train import fallback
from bilayer_jax.train import sharding
from bilayer_jax.train import stage_setup

import train_utils


@pytest.fixture(scope='module')
def data_dir(demo_data_dir):
  return demo_data_dir


@pytest.fixture(scope='module')
def finished_run(tiny_base_run):
  """A 4-step base run with checkpoints at steps 2 and 4."""
  return tiny_base_run[0]


def _copy(run, tmp_path):
  shutil.copytree(run / 'checkpoints', tmp_path / 'checkpoints')
  return tmp_path / 'checkpoints'


def _files(directory):
  return sorted(str(p.relative_to(directory)) for p in directory.rglob('*') if p.is_file())


def _restore(config, workdir):
  """fallback.restore_latest_readable as the trainer calls it (no compilation needed)."""
  training = families.get('bilayer').training
  config = config_lib.from_config_dict(config)
  _, abstract, shardings = stage_setup.state_layout(training, config, training.step_config(config, 'base'),
                                                    sharding.make_mesh())
  manager = checkpoints.make_manager(str(workdir), keep=5)
  try:
    return fallback.restore_latest_readable(manager, checkpoints.with_shardings(abstract, shardings))
  finally:
    manager.close()


def _truncate_largest_array_file(ckpts):
  data = max((ckpts / '4' / 'state').rglob('ocdbt.process_0/d/*'), key=lambda p: p.stat().st_size)
  os.truncate(data, data.stat().st_size // 2)


CORRUPTIONS = {
    'truncated array data': _truncate_largest_array_file,
    'truncated _METADATA': lambda c: os.truncate(c / '4' / 'state' / '_METADATA', 100),
    'empty _METADATA': lambda c: os.truncate(c / '4' / 'state' / '_METADATA', 0),
    'missing array folder': lambda c: shutil.rmtree(c / '4' / 'state' / 'ocdbt.process_0'),
    'missing state item': lambda c: shutil.rmtree(c / '4' / 'state'),
    'missing meta item': lambda c: shutil.rmtree(c / '4' / 'meta'),
}


@pytest.mark.parametrize('corrupt', CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(data_dir, finished_run, tmp_path, corrupt):
  ckpts = _copy(finished_run, tmp_path)
  corrupt(ckpts)
  files_before = _files(ckpts / '4')
  state, step = _restore(train_utils.tiny_config(data_dir), tmp_path)
  assert step == 2 and int(state['step']) == 2
  assert sorted(p.name for p in ckpts.iterdir()) == ['2', '4.corrupt']
  # Set aside, never deleted; what the failed restore printed is kept beside it.
  assert set(files_before) <= set(_files(ckpts / '4.corrupt'))
  assert 'Traceback' in (ckpts / '4.corrupt' / 'restore_error.log').read_text()


def test_every_checkpoint_bad_is_one_clear_error_and_nothing_is_removed(data_dir, finished_run, tmp_path):
  ckpts = _copy(finished_run, tmp_path)
  before = len(_files(ckpts))
  for step in ('2', '4'):
    os.truncate(ckpts / step / 'state' / '_METADATA', 0)
  expected = r'no checkpoint in .* reads back: 4 \(.*\); 2 \(.*nothing deleted'
  with pytest.raises(fallback.CheckpointError, match=expected):
    _restore(train_utils.tiny_config(data_dir), tmp_path)
  assert sorted(p.name for p in ckpts.iterdir()) == ['2.corrupt', '4.corrupt']
  assert len(_files(ckpts)) == before + 2  # + the two restore_error.log files


def test_a_checkpoint_of_another_architecture_is_an_error_not_corruption(data_dir, finished_run, tmp_path):
  ckpts = _copy(finished_run, tmp_path)
  config = train_utils.tiny_config(data_dir)
  config.model.pse_num_channels = 16  # trained with 32
  with pytest.raises(fallback.CheckpointError, match=r'keypoints_embedder.*written with another config'):
    _restore(config, tmp_path)
  assert sorted(p.name for p in ckpts.iterdir()) == ['2', '4']


def _run_py(workdir, data_dir, num_steps):
  return [sys.executable, str(train_utils.REPO / 'run.py'), '--config',
          str(train_utils.REPO / 'configs' / 'demo.py') + ':base', '--workdir', str(workdir),
          f'--config.data.data_dir={data_dir}', '--config.batch_size=2', f'--config.num_steps={num_steps}',
          '--config.loss.per_vgg16_lpips_weight=0', '--config.log.checkpoint_every_steps=2',
          '--config.log.eval_every_steps=0', '--config.log.image_every_steps=0', '--config.log.keep_checkpoints=5',
          '--config.standing_stats.num_batches=1']


_ENV = {**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}


@pytest.mark.slow
def test_run_py_resumes_from_the_previous_checkpoint_with_one_warning(data_dir, finished_run, tmp_path):
  """What a user sees after a node died mid-write: one warning naming the checkpoint and why, no traceback."""
  ckpts = _copy(finished_run, tmp_path)
  _truncate_largest_array_file(ckpts)
  run = subprocess.run(_run_py(tmp_path, data_dir, 4), env=_ENV, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr, run.stderr[-3000:]
  warning = [line for line in run.stderr.splitlines() if 'does not read back' in line]
  assert len(warning) == 1 and 'OUT_OF_RANGE' in warning[0] and '4.corrupt' in warning[0], warning
  assert 'resumed from this workdir at step 2' in run.stderr
  assert sorted(p.name for p in ckpts.iterdir()) == ['2', '4', '4.corrupt']


@pytest.mark.slow
def test_run_py_user_errors_are_one_line_and_write_nothing(data_dir, tmp_path):
  cases = {'--config.batch_size=-1': 'config.batch_size=-1: expected an integer >= 1',
           '--config.log.eval_every_steps=-1': 'config.log.eval_every_steps=-1',
           '--config.bach_size=4': 'names no such field',
           '--config.init_from=/nonexistent': 'config.init_from=',
           '--config.data.name=talking_heads/none': "data.name 'talking_heads/none' with data.demo: expected one of",
           '--config.data.demo=False --config.data.name=talking_heads/none':
               "no prepared dataset 'talking_heads/none'"}
  for flag, expected in cases.items():
    workdir = tmp_path / 'w'
    run = subprocess.run(_run_py(workdir, data_dir, 4) + flag.split(), env=_ENV, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == errors.EXIT_USER_ERROR, (flag, run.stderr[-3000:])
    assert 'Traceback' not in run.stderr and 'error: ' in run.stderr and expected in run.stderr, run.stderr[-3000:]
    if 'data.name' not in flag:  # the dataset is looked up once the stage starts
      assert not workdir.exists(), flag


def _run_both(workdir, data_dir):
  """run.py with stage 'both': 30 base + 30 enhancer steps, checkpoints only at the end or on preemption."""
  return [sys.executable, str(train_utils.REPO / 'run.py'), '--config', str(train_utils.REPO / 'configs' / 'demo.py'),
          '--workdir', str(workdir), f'--config.data.data_dir={data_dir}', '--config.batch_size=2',
          '--config.num_steps=30', '--config.enhancer_num_steps=30', '--config.loss.per_vgg16_lpips_weight=0',
          '--config.log.every_steps=1', '--config.log.checkpoint_every_steps=0', '--config.log.eval_every_steps=0',
          '--config.log.image_every_steps=0', '--config.standing_stats.num_batches=1']


def _preempt_during(command, stage, env):
  """Starts `command`, sends SIGTERM once `stage` logs a training step; returns (exit code, output)."""
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  log, in_stage, deadline = [], False, time.time() + 600
  for line in proc.stdout:
    log.append(line)
    in_stage = in_stage or f'stage {stage} trains' in line
    if in_stage and ('] loss/total' in line or 'loss/total=' in line):
      break
    assert time.time() < deadline, ''.join(log[-30:])
  proc.send_signal(signal.SIGTERM)
  log.extend(proc.stdout)
  return proc.wait(timeout=300), ''.join(log)


@pytest.mark.slow
def test_preemption_in_either_stage_ends_the_run_and_the_same_command_resumes(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  env = _ENV
  command = _run_both(workdir, data_dir)
  code, text = _preempt_during(command, 'base', env)
  assert code == errors.EXIT_PREEMPTED, text[-3000:]
  assert 'preempted in the base stage' in text and 'stage enhancer' not in text, text[-3000:]
  assert not (workdir / 'enhancer').exists() and not (workdir / 'base' / 'params').exists()

  code, text = _preempt_during(command, 'enhancer', env)  # the same command: resumes base, then the enhancer
  assert code == errors.EXIT_PREEMPTED, text[-3000:]
  assert 'resumed from this workdir at step' in text and 'preempted in the enhancer stage' in text, text[-3000:]
  assert (workdir / 'base' / 'params').is_dir() and not (workdir / 'enhancer' / 'params').exists()

  done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'base stage already finished' in done.stderr and 'resumed from this workdir at step' in done.stderr
  assert (workdir / 'enhancer' / 'params').is_dir()
