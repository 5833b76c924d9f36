r"""Paper stage 1: identity embedder, texture generator, keypoints embedder, inference generator + discriminator.

  python run.py --config configs/paper_base.py --workdir runs/paper_base \
      --config.data.name=voxceleb2 --config.data.data_dir=/data/tfds \
      --config.loss.perceptual_weights_dir=/data/weights/perceptual

Effective values (docs/model.md#paper-configuration): 256^2, global batch 40 (one SyncBN over all
devices), Adam 2e-4 / (0.5, 0.999) / eps 1e-7 for every network, losses RaGAN-hinge 0.5, feature
matching 10, VGG19 10 + VGGFace 0.01 (layer weights 1/32 .. 1), pixel L1 10 on the LF image, BCE 10,
warping regulariser 0, harmonic keypoint encoding on. The discriminator trains (the released code's never
does). Needs VGG19 (torchvision) and VGGFace weight files (see the README). The authors trained 2225
"epochs" of their VoxCeleb2-HQ subset on 8 GPUs; `python bench/train_step.py` measures the step on your
machine.
"""

from configs import common


def get_config(arg=None):
  del arg
  return common.base_config()
