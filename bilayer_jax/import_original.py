r"""Imports an original PyTorch run directory into a bilayer_jax params directory.

    python -m bilayer_jax.import_original --run_dir runs/vc2-hq_adrianb_paper_main --epoch 2225 \
        [--enh_run_dir runs/vc2-hq_adrianb_paper_enhancer --enh_epoch 1225] --out params/official
    python -m bilayer_jax.import_original --family fsth --run_dir model_weights.tar \
        [--enh_run_dir finetuned_model.tar] --out params/fsth     # the FSTH reference's checkpoint files
    python -m bilayer_jax.import_original --family lpd --run_dir experiments/NAME [--epoch 00125000] \
        --out params/lpd                                           # an official LPD model_<iteration>.pth
    python -m bilayer_jax.import_original --url [URL] [--download_dir runs/official] --out params/official

The configuration comes from the runs' args.txt, corrected by what the checkpoints' shapes say (harmonic
keypoint encoding, image size, spectral norm). Every key and shape is checked; a mismatch names the
network, the key and the expected and found shapes. The output (orbax variables + config.json) is what
training (`config.init_from`) and inference load; it appears only once completely written.

--url downloads the released bi-layer runs first (base epoch 2225 and enhancer epoch 1225 unless --epoch and
--enh_epoch say otherwise) into --download_dir, from the original's Google Drive folder (the default; needs
gdown) or from any URL laid out like it (`<url>/runs/<run>/...`, https:// or file://), verifying each file
(`bilayer_jax.convert.official_weights`); a rerun reuses the files already downloaded.
"""

from absl import flags

from bilayer_jax import cli
from bilayer_jax import errors
from bilayer_jax import model_io
from bilayer_jax import xla_cpu
from bilayer_jax.convert import official_weights

FLAGS = flags.FLAGS


def _define_flags():
  """Defines the command-line flags (only when run as a program, so importing the module is side-effect free)."""
  flags.DEFINE_string('run_dir', None, 'Base run directory (args.txt + checkpoints/<epoch>_<net>.pth); fsth: the '
                      'reference\'s model_weights.tar (or its folder); lpd: an official model_<iteration>.pth or '
                      'its experiment folder (the newest checkpoint).')
  flags.DEFINE_string('epoch', None, 'Base checkpoint epoch (bilayer; lpd: the iteration, default the newest).')
  flags.DEFINE_string('enh_run_dir', None, 'Enhancer run directory (optional); fsth: a finetuned_model.tar.')
  flags.DEFINE_string('enh_epoch', None, 'Enhancer checkpoint epoch.')
  flags.DEFINE_string('out', None, 'Output params directory (must not exist).')
  flags.DEFINE_string('family', 'bilayer', 'Model family whose reference implementation wrote the run.')
  flags.DEFINE_string('url', None, 'Download the released bi-layer runs from this URL first (instead of '
                      f'--run_dir; e.g. {official_weights.DRIVE_FOLDER_URL}).')
  flags.DEFINE_string('download_dir', 'runs/official', 'Where --url downloads the run directories to.')


def import_run(run_dir, epoch, enh_run_dir=None, enh_epoch=None, out=None, family='bilayer'):
  """Imports the run(s) into the params directory `out` (must not exist); returns its path."""
  from bilayer_jax import families  # pylint: disable=g-import-not-at-top
  if family not in families.FAMILIES:
    raise errors.InvalidArgumentError(f'--family={family!r}: expected one of {", ".join(sorted(families.FAMILIES))}')
  if family == 'bilayer' and not epoch:
    raise errors.InvalidArgumentError('--epoch: required for bilayer runs (the checkpoint epoch, e.g. 2225)')
  converter = families.get(family).converters['original']
  cfg, variables, metadata = converter.import_run(run_dir, epoch, enh_run_dir, enh_epoch)
  metadata = {**metadata, 'imported_from': {'run_dir': str(run_dir), 'epoch': str(epoch),
                                            'enh_run_dir': enh_run_dir and str(enh_run_dir),
                                            'enh_epoch': enh_epoch and str(enh_epoch)}}
  path = model_io.save_params(out, cfg, variables, metadata)
  print(f'imported {", ".join(model_io.networks_in(variables))} -> {path}')
  return path


def main(argv):
  del argv
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  if bool(FLAGS.url) == bool(FLAGS.run_dir):
    raise errors.InvalidArgumentError('give either --run_dir or --url')
  if FLAGS.url:
    if FLAGS.family != 'bilayer' or FLAGS.enh_run_dir:
      raise errors.InvalidArgumentError('--url downloads the bi-layer runs: without --family and --enh_run_dir')
    epoch = FLAGS.epoch or official_weights.BASE_EPOCH
    enh_epoch = official_weights.ENHANCER_EPOCH if FLAGS.enh_epoch is None else FLAGS.enh_epoch
    runs = official_weights.download(FLAGS.url, FLAGS.download_dir, epoch, enh_epoch)
    import_run(runs.base, epoch, runs.enhancer or None, enh_epoch or None, FLAGS.out)
    return
  import_run(FLAGS.run_dir, FLAGS.epoch, FLAGS.enh_run_dir, FLAGS.enh_epoch, FLAGS.out, FLAGS.family)


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['out'])
  cli.run(main)
