r"""Exports a bilayer_jax params directory to the original's run-directory layout.

    python -m bilayer_jax.tools.export_torch --params params/official --out_dir runs/exported_main \
        --epoch 2225 [--enh_out_dir runs/exported_enhancer --enh_epoch 1225]

Writes `args.txt` + `checkpoints/<epoch>_<net>.pth` (spectral-norm form) for the base networks (and the
discriminator if present) and, with --enh_out_dir, the enhancer run (texture_enhancer + discriminator),
so the original's infer.py/train.py load them. Parameters imported from the original come back
bit-exact, with the original's args.txt; other parameters get the paper script's arguments with their
own architecture values.
"""

from absl import flags

from bilayer_jax import cli
from bilayer_jax import model_io
from bilayer_jax import xla_cpu
from bilayer_jax.convert import original

FLAGS = flags.FLAGS


def _define_flags():
  """Defines the command-line flags (only when run as a program, so importing the module is side-effect free)."""
  flags.DEFINE_string('params', None, 'bilayer_jax params directory.')
  flags.DEFINE_string('out_dir', None, 'Base run directory to write.')
  flags.DEFINE_string('epoch', '1', 'Epoch number for the base checkpoint names.')
  flags.DEFINE_string('enh_out_dir', None, 'Enhancer run directory to write (needs a texture_enhancer).')
  flags.DEFINE_string('enh_epoch', '1', 'Epoch number for the enhancer checkpoint names.')


def export_params(params_dir: str, out_dir: str, epoch: str, enh_out_dir: str = None, enh_epoch: str = '1'):
  """Writes the original layout for a params directory (see module docstring)."""
  cfg, variables, info = model_io.load_params(params_dir)
  networks = model_io.networks_in(variables)
  metadata = info.get('metadata', {})
  base_nets = [n for n in original.BASE_NETWORKS if n in networks]
  missing = sorted(set(original.BASE_NETWORKS) - set(base_nets))
  if missing:
    raise original.RunDirError(f'{params_dir}: cannot write a base run without {missing}')
  disc = ['discriminator'] if 'discriminator' in networks else []
  original.export_run(out_dir, epoch, cfg, variables, base_nets + disc,
                      args=metadata.get('base_args') or None, stage='base')
  if enh_out_dir:
    if 'texture_enhancer' not in networks:
      raise original.RunDirError(f'{params_dir} has no texture_enhancer to write an enhancer run')
    original.export_run(enh_out_dir, enh_epoch, cfg, variables, ['texture_enhancer'] + disc,
                        args=metadata.get('enh_args') or None, stage='enhancer')


def main(argv):
  del argv
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  export_params(FLAGS.params, FLAGS.out_dir, FLAGS.epoch, FLAGS.enh_out_dir, FLAGS.enh_epoch)
  print(f'wrote {FLAGS.out_dir}' + (f' and {FLAGS.enh_out_dir}' if FLAGS.enh_out_dir else ''))


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['params', 'out_dir'])
  cli.run(main)
