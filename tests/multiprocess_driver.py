"""Subprocess driver of test_train_scale: one of N processes of a multi-process (gloo) training run.

  python tests/multiprocess_driver.py PORT NUM_PROCESSES PROCESS_ID DATA_DIR WORKDIR OUT.json

Joins the jax.distributed cluster on 127.0.0.1:PORT with CPU collectives over gloo (each process may have
several local devices via XLA_FLAGS), trains the tiny demo config's base stage for 4 steps into the shared
WORKDIR through the real loop (per-host input shards, global batches, orbax checkpoints), and writes this
process's metrics per step (losses, gradient and parameter norms: all global values), its final
periodic evaluation and the evaluation protocol's summary (`run.py --mode=eval`'s code path, every host
evaluating its shard of the videos) to OUT.json.
"""

import json
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
  from bilayer_jax.evaluators import runner  # pylint: disable=g-import-not-at-top
  config.eval.metrics, config.eval.max_targets = 'l1,psnr,ssim', 4
  protocol_results = runner.evaluate(config, workdir, progress=False)
  result = {'process_index': jax.process_index(), 'process_count': jax.process_count(),
            'device_count': jax.device_count(), 'local_device_count': jax.local_device_count(),
            'end_step': summary['end_step'], 'eval': summary['eval'],
            'protocol': protocol_results['self_reenactment'],
            'metrics': {str(k): v for k, v in summary['metrics'].items()}}
  with open(out_path, 'w') as f:
    json.dump(result, f)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(*sys.argv[1:])
