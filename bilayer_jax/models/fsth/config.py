"""Architecture of the few-shot talking-head model (FSTH, Zakharov et al. 2019) as its reference implementation
builds it (docs/fsth.md#networks).

`FSTHConfig()` is the reference's size: 224² inputs zero-padded to 256², channels 64 -> 512, a 512-d
embedding. `width` scales every channel count (the parity fixtures use 1/8 of it); the reference hard-codes
them. Derived sizes (block channels, the length of the AdaIN projection and its slices) are properties, so a
configuration is only ever these few numbers.
"""

import dataclasses
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class FSTHConfig:
  """The reference's constants (defaults) and the one width knob."""
  image_size: int = 224  # network input side; inputs smaller than padded_size are zero-padded to it
  padded_size: int = 256
  discriminator_pad_from: int = 224  # the discriminator always pads as if its input were this size
  width: int = 64  # channels of the first block; the reference's 64 -> 128 -> 256 -> 512
  num_res_blocks: int = 5
  first_kernel: int = 9  # the generator's first down block uses 9x9 convolutions
  leaky_slope: float = 0.01  # nn.LeakyReLU() default
  adain_eps: float = 1e-5  # added to the (unbiased) standard deviation
  instance_norm_eps: float = 1e-5
  spectral_eps: float = 1e-12  # nn.utils.spectral_norm default

  @property
  def embedding_dim(self) -> int:
    return 8 * self.width

  @property
  def down_channels(self) -> Tuple[int, ...]:
    """Outputs of the embedder's (and discriminator's) six down blocks; the generator uses the first four."""
    w = self.width
    return (w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w)

  @property
  def up_channels(self) -> Tuple[Tuple[int, int], ...]:
    """(in, out) of the generator's four up blocks."""
    w = self.width
    return ((8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, w // 2))

  @property
  def adain_sizes(self) -> Tuple[int, ...]:
    """Length of each AdaIN slice of the projection, in order: the residual blocks, the up blocks, the last
    AdaIN ([mean | std] per normalisation)."""
    res = (4 * self.embedding_dim,) * self.num_res_blocks
    up = tuple(2 * (cin + cout) for cin, cout in self.up_channels)
    return res + up + (2 * self.up_channels[-1][1],)

  @property
  def projection_length(self) -> int:
    return sum(self.adain_sizes)

  def pad_amount(self, size: int) -> int:
    """Zero padding per side that brings `size` to padded_size (none when it is already as large)."""
    return (self.padded_size - size) // 2 if size < self.padded_size else 0

  def validate(self) -> 'FSTHConfig':
    if self.width < 4 or self.width % 4:
      raise ValueError(f'width {self.width}: expected a multiple of 4 (the self-attention at 2 x width channels '
                       'projects to channels / 8)')
    if self.padded_size % 64:
      raise ValueError(f'padded_size {self.padded_size}: six down blocks need a multiple of 64')
    return self
