"""Subprocess driver of test_train_scale: one of N processes of a multi-process (gloo) training run.

  python tests/multiprocess_driver.py PORT NUM_PROCESSES PROCESS_ID DATA_DIR WORKDIR OUT.json

Joins the jax.distributed cluster on 127.0.0.1:PORT with CPU collectives over gloo (each process may have
several local devices via XLA_FLAGS), trains the tiny demo config's base stage for 4 steps into the shared
WORKDIR through the real loop (per-host input shards, global batches, orbax checkpoints), and writes this
process's metrics per step (losses, gradient and parameter norms: all global values), its final
periodic evaluation and the evaluation protocol's summary (`run.py --mode=eval`'s code path, every host
evaluating its shard of the videos) to OUT.json. Then process 0 truncates the largest array file of the
step-4 checkpoint and both restore through the corrupt-checkpoint fallback: the step each host chose and
the checkpoint folder it saw afterwards go to OUT.json too (every host must make the same choice).
"""

import json
import os
import pathlib
import sys

import jax

import train_utils  # pylint: disable=g-bad-import-order  (puts the repo on sys.path)


def main(port, num_processes, process_id, data_dir, workdir, out_path):
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=int(num_processes),
                             process_id=int(process_id))
  from bilayer_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = train_utils.tiny_config(data_dir, num_steps=4, batch_size=2 * jax.device_count())
  summary = loop.train_and_evaluate(config, workdir)
  from bilayer_jax import evaluate as runner  # pylint: disable=g-import-not-at-top
  config.eval.metrics, config.eval.max_targets = ('l1', 'psnr', 'ssim'), 4
  protocol_results = runner.evaluate(config, workdir, progress=False)
  fallback_step, listing = _restore_after_corruption(config, workdir)
  result = {'process_index': jax.process_index(), 'process_count': jax.process_count(),
            'fallback_step': fallback_step, 'checkpoints_after_fallback': listing,
            'device_count': jax.device_count(), 'local_device_count': jax.local_device_count(),
            'end_step': summary['end_step'], 'eval': summary['eval'],
            'protocol': protocol_results['self_reenactment'],
            'metrics': {str(k): v for k, v in summary['metrics'].items()}}
  with open(out_path, 'w') as f:
    json.dump(result, f)
  jax.distributed.shutdown()


def _restore_after_corruption(config, workdir):
  """(step restored, sorted checkpoint folder names) after process 0 truncated step 4's largest data file."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from bilayer_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from bilayer_jax import families  # pylint: disable=g-import-not-at-top
  from bilayer_jax.train import checkpoints, fallback, sharding, stage_setup  # pylint: disable=g-import-not-at-top
  ckpts = pathlib.Path(workdir) / 'checkpoints'
  if jax.process_index() == 0:
    data = max((ckpts / '4' / 'state').glob('ocdbt.process_*/d/*'), key=lambda f: f.stat().st_size)
    os.truncate(data, data.stat().st_size // 2)
  multihost_utils.sync_global_devices('corrupted')
  mesh = sharding.make_mesh()
  training, typed = families.get('bilayer').training, config_lib.from_config_dict(config)
  _, abstract, shardings = stage_setup.state_layout(training, typed, training.step_config(typed, 'base'), mesh)
  manager = checkpoints.make_manager(workdir, keep=5)
  _, step = fallback.restore_latest_readable(manager, checkpoints.with_shardings(abstract, shardings))
  manager.close()
  multihost_utils.sync_global_devices('restored')
  return step, sorted(p.name for p in ckpts.iterdir())


if __name__ == '__main__':
  main(*sys.argv[1:])
