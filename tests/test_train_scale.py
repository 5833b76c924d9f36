"""Scale: a step sharded over 8 devices (data parallel, FSDP) equals the single-device step; two processes
(gloo collectives, 2 devices each) train the demo config together and agree. Both run in subprocesses
(fake CPU devices must be set before JAX starts)."""

import collections
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest


TESTS = os.path.dirname(os.path.abspath(__file__))


def _env(num_devices: int):
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}"
  return {**os.environ, 'XLA_FLAGS': flags,
          'JAX_DISABLE_MOST_OPTIMIZATIONS': '1', 'JAX_PLATFORMS': 'cpu',
          'JAX_COMPILATION_CACHE_DIR': os.environ['BILAYER_JAX_COMPILATION_CACHE']}


def _group(key: str) -> str:
  """'<step>/<network-level group>': errors are judged against the scale of a whole network's arrays
  (a single bias whose gradient BatchNorm cancels to ~0 has no meaningful relative error)."""
  step = key.split('/')[1]
  if '/metrics/' in key:
    return f'{step}/metrics'
  parts = re.findall(r"\['([^\]']+)'\]", key)
  moment = '.mu' if '.mu' in key else '.nu' if '.nu' in key else ''
  return f'{step}/' + '/'.join(parts[:2]) + moment


def _errors(results, mode):
  """{group: (max |mode - single|, max |single|)}."""
  errors = collections.defaultdict(lambda: [0.0, 0.0])
  for key in results.files:
    if not key.startswith('single/step'):
      continue
    ref = results[key].astype(np.float64)
    other = results[mode + key[len('single'):]].astype(np.float64)
    e = errors[_group(key)]
    e[0] = max(e[0], float(np.abs(other - ref).max(initial=0)))
    e[1] = max(e[1], float(np.abs(ref).max(initial=0)))
  return errors


@pytest.fixture(scope='module')
def sharded_results(tmp_path_factory):
  out = tmp_path_factory.mktemp('sharded') / 'results.npz'
  proc = subprocess.run([sys.executable, os.path.join(TESTS, 'sharded_step_driver.py'), str(out)], cwd=TESTS,
                        env=_env(8), capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return np.load(out)


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['dp', 'fsdp'])
def test_sharded_step_equals_single_device(sharded_results, mode):
  results = sharded_results
  assert int(results['single/num_sharded']) == 0 and int(results['dp/num_sharded']) == 0
  if mode == 'fsdp':
    assert int(results['fsdp/num_sharded']) > 50  # parameters and Adam moments really are split
  # Identical up to float32 summation order: held to the noise floor of merely reversing the batch order,
  # plus 5e-3 of the group's scale. The generators' gradients are dominated by the feature-matching term,
  # whose float32 value cancels heavily (fixtures README §5), so a different reduction tree moves them by up
  # to ~2e-3 of their scale (measured: texture generator Adam moments 1.8e-3 with DP on a 2-core AVX-512
  # CPU, where reversing the batch moved them by 1.6e-5). Sharding mistakes (per-device BatchNorm
  # statistics, a missing gradient all-reduce) change these arrays by the order of their scale.
  floor = _errors(results, 'permuted')
  for group, (err, scale) in _errors(results, mode).items():
    assert err <= 4 * floor[group][0] + 5e-3 * scale, (group, err, floor[group][0], scale)
  # The first step's losses, BN statistics and spectral vectors agree to float32 rounding: per array, 4x the
  # batch-reversal noise floor plus 1e-4 of the array's scale. A BN mean is a sum whose terms cancel, so its
  # rounding scales with the array, not with the element (measured: 1.26e-6 on a mean of 0.011 in an array
  # of scale ~0.1 on a 2-core AVX-512 EPYC); per-device statistics would move it by the order of the scale.
  for key in results.files:
    if key.startswith('single/step1/') and ('/loss/' in key or "['model_state']" in key):
      ref = results[key].astype(np.float64)
      err = np.abs(results[mode + key[len('single'):]] - ref).max(initial=0)
      floor = np.abs(results['permuted' + key[len('single'):]] - ref).max(initial=0)
      scale = np.abs(ref).max(initial=0)
      assert err <= 4 * floor + 1e-4 * scale + 1e-7, (key, err, floor, scale)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_together_and_agree(tmp_path, demo_data_dir):
  data_dir = demo_data_dir
  port, workdir = _free_port(), tmp_path / 'run'
  procs = [subprocess.Popen([sys.executable, os.path.join(TESTS, 'multiprocess_driver.py'), str(port), '2', str(i),
                             data_dir, str(workdir), str(tmp_path / f'p{i}.json')], cwd=TESTS, env=_env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=1200)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  results = [json.loads((tmp_path / f'p{i}.json').read_text()) for i in range(2)]
  for i, r in enumerate(results):
    assert (r['process_index'], r['process_count'], r['device_count'], r['local_device_count']) == (i, 2, 4, 2)
    assert r['end_step'] == 4 and sorted(r['metrics']) == ['1', '2', '3', '4']
  assert results[0]['metrics'] == results[1]['metrics']  # global values: bit-identical on both hosts
  assert results[0]['eval'] == results[1]['eval']
  # The evaluation protocol: host 0 evaluates the demo's first test video, host 1 the second; both get all frames.
  assert results[0]['protocol'] == results[1]['protocol']
  assert results[0]['protocol']['summary']['frames'] == 8 and np.isfinite(results[0]['protocol']['summary']['psnr'])
  assert (workdir / 'eval').is_dir()
  assert all(np.isfinite(v) for m in results[0]['metrics'].values() for v in m.values())
  # A corrupt latest checkpoint: both hosts fall back to the same step, and it is set aside once.
  assert [r['fallback_step'] for r in results] == [2, 2]
  assert results[0]['checkpoints_after_fallback'] == results[1]['checkpoints_after_fallback'] == ['2', '4.corrupt']
  assert (workdir / 'params' / 'config.json').is_file()
