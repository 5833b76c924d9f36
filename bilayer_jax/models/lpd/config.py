"""Architecture of the latent-pose-descriptor model (LPD, Burkov et al. 2020) as its official code builds it
(docs/lpd.md#networks).

`LPDConfig()` is the official default: 256² images, a 512-d identity vector from a ResNeXt-50 (32x4d), a
256-d pose vector from a MobileNetV2, a generator from a learned 512x4x4 constant and a projection
discriminator with 64 -> 512 channels. The official code takes the generator's and discriminator's sizes
as arguments; the two torchvision encoders are fixed there, so their widths are fields here too (the parity
fixtures shrink them). Derived sizes (block channels, AdaIN slices) are properties.
"""

import dataclasses
import math
from typing import Tuple


def make_divisible(value: float, divisor: int = 8) -> int:
  """MobileNetV2's channel rounding: to a multiple of `divisor`, never below it nor 10% below `value`."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


@dataclasses.dataclass(frozen=True)
class LPDConfig:
  """The official code's constants (defaults) and argument values."""
  image_size: int = 256
  identity_dim: int = 512  # --embed_channels: identity vector, AdaIN MLP input part, discriminator channels
  pose_dim: int = 256  # --pose_embedding_size (configs/default.yaml)
  num_channels: int = 64  # --num_channels: generator's last and discriminator's first block width
  max_num_channels: int = 512
  constant_size: int = 4  # --gen_constant_input_size
  num_residual_blocks: int = 2  # --gen_num_residual_blocks (at constant_size)
  dis_num_blocks: int = 7
  # ResNeXt-50 (32x4d): stem width, per-stage base widths and depths, groups and width per group.
  resnext_stem: int = 64
  resnext_planes: Tuple[int, ...] = (64, 128, 256, 512)
  resnext_depths: Tuple[int, ...] = (3, 4, 6, 3)
  resnext_groups: int = 32
  resnext_width_per_group: int = 4
  mobilenet_width: float = 1.0  # MobileNetV2 width_mult
  pose_dropout: float = 0.2  # MobileNetV2's classifier dropout
  adain_eps: float = 1e-4
  spectral_eps: float = 1e-4  # the convolutions', discriminator linear's and embedding table's
  mlp_spectral_eps: float = 1e-12  # the AdaIN MLP's (spectral_norm default)

  @property
  def num_upsample_blocks(self) -> int:
    return int(math.log2(self.image_size // self.constant_size))

  @property
  def generator_channels(self) -> Tuple[int, ...]:
    """Channels of the constant, then the output of each up block (clamped to max_num_channels)."""
    n = self.num_upsample_blocks
    return tuple(min(self.num_channels * 2 ** (n - i), self.max_num_channels) for i in range(n + 1))

  @property
  def adain_channels(self) -> Tuple[int, ...]:
    """Channels of each AdaIN in module order (two per block, then the head's); each takes 2 x channels
    values of the MLP output, bias first."""
    ch = self.generator_channels
    res = (ch[0], ch[0]) * self.num_residual_blocks
    up = tuple(c for cin, cout in zip(ch[:-1], ch[1:]) for c in (cin, cout))
    return res + up + (ch[-1],)

  @property
  def num_affine_params(self) -> int:
    return 2 * sum(self.adain_channels)

  @property
  def mlp_hidden(self) -> int:
    return max(self.identity_dim + self.pose_dim, 512)

  @property
  def num_down_blocks(self) -> int:
    """The discriminator's stem plus its down blocks (the rest of its dis_num_blocks keep the size)."""
    return min(int(math.log2(self.image_size)) - 2, self.dis_num_blocks)

  @property
  def discriminator_channels(self) -> Tuple[int, ...]:
    """Output channels of the stem and each of the dis_num_blocks - 1 residual blocks; the last block outputs
    identity_dim (the projection's width)."""
    channels = [self.num_channels]
    for i in range(1, self.dis_num_blocks):
      if i < self.num_down_blocks:
        channels.append(min(channels[-1] * 2, self.max_num_channels))
      else:
        channels.append(channels[-1])
    channels[-1] = self.identity_dim
    return tuple(channels)

  @property
  def mobilenet_stages(self) -> Tuple[Tuple[int, int, int, int], ...]:
    """(expansion, output channels, repeats, first stride) of MobileNetV2's inverted-residual stages."""
    base = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))
    return tuple((t, make_divisible(c * self.mobilenet_width), n, s) for t, c, n, s in base)

  @property
  def mobilenet_stem(self) -> int:
    return make_divisible(32 * self.mobilenet_width)

  @property
  def mobilenet_last(self) -> int:
    return make_divisible(1280 * max(1.0, self.mobilenet_width))

  def validate(self) -> 'LPDConfig':
    ratio = self.image_size / self.constant_size
    if ratio < 2 or not math.log2(ratio).is_integer():
      raise ValueError(f'image_size {self.image_size}: expected constant_size ({self.constant_size}) times a '
                       'power of 2')
    if self.image_size < 32:
      raise ValueError(f'image_size {self.image_size}: the encoders downsample by 32')
    for planes in self.resnext_planes:
      if planes * self.resnext_width_per_group // 64 < 1:
        raise ValueError(f'resnext_planes {self.resnext_planes} with width_per_group '
                         f'{self.resnext_width_per_group}: a group would have no channels')
    return self
