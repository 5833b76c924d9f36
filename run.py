r"""Trains (and evaluates) bi-layer head avatars: `python run.py --config configs/<x>.py --workdir DIR`.

  python run.py --config configs/demo.py --workdir runs/demo                 # both stages, tiny, CPU
  python run.py --config configs/paper_base.py --workdir runs/base \
      --config.data.data_dir=/data/tfds --config.loss.perceptual_weights_dir=/data/weights
  python run.py --config configs/paper_enhancer.py --workdir runs/enh --config.init_from=runs/base/params

Config fields are overridden with --config.<field>=<value> (the config is locked: typos fail). Several
processes (GPU nodes, TPU pod hosts): start the same command on every host; with BILAYER_JAX_DISTRIBUTED=1
(or --distributed) jax.distributed.initialize() connects them (coordinator/process ids from the
environment: TPU pods and SLURM need nothing else; otherwise set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID).

Exit codes: 0 finished; 2 a user error (bad config value, missing or corrupt input: one line `error: ...`,
nothing written; BILAYER_JAX_TRACEBACK=1 adds the traceback); 75 preempted (SIGTERM/SIGINT: the current
stage's state is saved, no later stage starts; rerun the same command to resume); 1 anything else.
"""

import logging as logging_std
import os
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from bilayer_jax import cli
from bilayer_jax import errors
from bilayer_jax import xla_cpu

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard logs and params.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                  'train: train (resuming if possible); eval: run the evaluation protocol (config.eval) on the '
                  'latest checkpoint of WORKDIR or on config.eval.params, writing WORKDIR/eval/<name>/.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-process training).')


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of orbax/tfds (dozens of lines per checkpoint); warnings and errors pass."""

  def filter(self, record):
    noisy = ('/orbax/', '/tensorflow_datasets/')
    return record.levelno >= logging_std.WARNING or not any(n in record.pathname for n in noisy)


def main(argv):
  del argv
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  config = cli.loaded_config()
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  from bilayer_jax import train  # pylint: disable=g-import-not-at-top
  train.enable_compilation_cache()  # reuse compiled train steps across runs and resumes
  if FLAGS.distributed or os.environ.get('BILAYER_JAX_DISTRIBUTED'):
    if os.environ.get('BILAYER_JAX_CPU_COLLECTIVES'):  # multi-process on CPU (tests, laptops)
      jax.config.update('jax_cpu_collectives_implementation', os.environ['BILAYER_JAX_CPU_COLLECTIVES'])
    # On TPU pods and SLURM clusters everything is auto-detected; elsewhere use the environment.
    kwargs = {}
    if os.environ.get('JAX_NUM_PROCESSES'):
      kwargs = dict(coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
                    num_processes=int(os.environ['JAX_NUM_PROCESSES']),
                    process_id=int(os.environ['JAX_PROCESS_ID']))
    jax.distributed.initialize(**kwargs)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # tf.data must not take accelerator memory
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(), jax.devices())
  from bilayer_jax.train import config_checks  # pylint: disable=g-import-not-at-top
  config_checks.check(config)
  from data_prep import demo  # pylint: disable=g-import-not-at-top
  demo.prepare(config)
  if FLAGS.mode == 'eval':
    from bilayer_jax import evaluate  # pylint: disable=g-import-not-at-top
    results = evaluate.evaluate(config, FLAGS.workdir)
    logging.info('self-reenactment: %s', results['self_reenactment']['summary'])
    return
  from bilayer_jax.train import loop  # pylint: disable=g-import-not-at-top
  summary = loop.train_and_evaluate(config, FLAGS.workdir)
  if summary.get('preempted'):
    logging.warning('preempted in the %s stage at step %d: rerun the same command to resume (exit code %d)',
                    summary['stage'], summary['end_step'], errors.EXIT_PREEMPTED)
    sys.exit(errors.EXIT_PREEMPTED)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
