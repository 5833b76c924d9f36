r"""FSTH meta-learning at the reference implementation's size (docs/fsth.md).

  python run.py --config configs/fsth.py --workdir runs/fsth \
      --config.data.name=talking_heads/voxceleb2 --config.data.data_dir=/data/tfds \
      --config.loss.perceptual_weights_dir=/data/weights/perceptual
  python run.py --config configs/fsth.py:paper ...    # the paper's content-loss weights and target frame

Effective values: 224² frames (zero-padded to 256² inside the networks), K = 8 frames per episode, batch 2
(the reference's params.py; raise it with --config.batch_size for more devices), Adam 5e-5 (embedder +
generator) and 2e-4 (discriminator and per-video rows), betas (0.9, 0.999), eps 1e-8, two discriminator
steps per iteration, content loss VGG19 0.15 + VGGFace 0.025 on [0, 1] images, feature matching 10,
embedding match 10, the target frame one of the K. The reference ran 375 epochs of VoxCeleb2.
`:paper` switches to the paper's weights (content 1e-2 / 2e-3) and a target frame apart from the K.
"""

from bilayer_jax import config as config_lib
from bilayer_jax.models.fsth.config import FSTHConfig


def reference_config(model: FSTHConfig = FSTHConfig()):
  c = config_lib.to_config_dict(config_lib.for_family(
      'fsth', model=model, stage='meta', networks_to_train=('embedder', 'generator', 'discriminator'),
      batch_size=2))
  c.data.num_source_frames = 8
  c.data.num_target_frames = 1
  c.standing_stats.enabled = False  # no batch statistics in FSTH
  c.standing_stats.networks = ()
  return c


def get_config(arg=None):
  """`arg`: '' (the reference's settings) or 'paper'."""
  c = reference_config()
  if arg == 'paper':
    c.loss.vgg19_weight = 1e-2
    c.loss.vggface_weight = 2e-3
    c.loss.target_in_sources = False
  elif arg:
    raise ValueError(f"configs/fsth.py:{arg}: expected no argument or 'paper'")
  return c
