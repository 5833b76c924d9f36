r"""LPD meta-learning at the official code's size (docs/lpd.md).

  python -m data_prep.build --input /data/voxceleb2 --name voxceleb2_latentpose --crop_style latentpose \
      --data_dir /data/tfds
  python run.py --config configs/lpd.py --workdir runs/lpd \
      --config.data.data_dir=/data/tfds \
      --config.loss.perceptual_weights_dir=/data/weights/perceptual

The official dataset is cropped by its face-box rule (`--crop_style latentpose`), which lets driving run
without landmarks; a dataset built with the bi-layer landmark crop trains too, and inference then crops
with landmarks (the params record the dataset's crop style).

Effective values (configs/default.yaml of the official code and its defaults): 256² frames, K = 8 identity
frames + 1 pose/target frame per video, batch 8 (2 GPUs x 4 there; raise it with --config.batch_size for
more devices), Adam betas (0, 0.999) eps 1e-5 at 5e-5 (embedder + generator) and 2e-4 (discriminator and
its projection table), one step each per iteration, EMA 0.999 of the embedder and generator, losses
adversarial 1 + feature matching 10 + VGG19 3e-2 + VGGFace 6e-3 + dice 1 + embedding match 1e-2, all pose
augmentations on. The paper's model trained for ~1-2.7 M iterations.
"""

from bilayer_jax import config as config_lib
from bilayer_jax.models.lpd.config import LPDConfig


def reference_config(model: LPDConfig = LPDConfig()):
  c = config_lib.to_config_dict(config_lib.for_family(
      'lpd', model=model, stage='meta', networks_to_train=('embedder', 'generator', 'discriminator'),
      batch_size=8))
  c.data.name = 'talking_heads/voxceleb2_latentpose'  # built with --crop_style latentpose (see above)
  c.data.num_source_frames = 8
  c.data.num_target_frames = 1
  c.standing_stats.enabled = False  # the official code keeps BatchNorm running averages instead
  c.standing_stats.networks = ()
  return c


def get_config(arg=None):
  if arg:
    raise ValueError(f'configs/lpd.py:{arg}: takes no argument')
  return reference_config()
