r"""Paper stage 2: the texture enhancer (+ discriminator), base networks frozen in eval mode.

  python run.py --config configs/paper_enhancer.py --workdir runs/paper_enhancer \
      --config.init_from=runs/paper_base/params --config.data.name=voxceleb2 \
      --config.data.data_dir=/data/tfds --config.loss.perceptual_weights_dir=/data/weights/perceptual

`init_from` is a params directory with the four base networks (and the discriminator): the `params/` a
base run writes, or official weights imported with `python -m bilayer_jax.import_original`. The intended
routing (docs/original_bugs.md#the-enhancer-stage-trains-nothing; the released script trains nothing): the
discriminator and the perceptual loss judge the ENHANCED image; pixel and segmentation losses still act on
the frozen inference generator (no effect on the enhancer, kept for fidelity of the logged totals).
"""

from configs import common


def get_config(arg=None):
  del arg
  return common.enhancer_config()
