"""Architecture configuration of the six networks, named exactly as the original's arguments.

`BilayerConfig()` is the paper configuration (docs/model.md#paper-configuration): the values of
`scripts/train_base_model_8gpus.sh` as argparse really parses it, so harmonic keypoint encoding and
source-pose embedding are ON; enhancer defaults.
Block counts are derived from sizes as in the original (e.g. log2(image_size / tex_input_tensor_size)
generator blocks). `validate()` rejects configurations whose shapes cannot fit together, naming the
arguments involved, instead of failing deep inside a network.
"""

import dataclasses
import math
from typing import Any, Dict, Tuple

# The four networks of the base stage, then the enhancer and the discriminator: every list of network names
# in the project starts from these two.
BASE_NETWORKS = ('identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator')
NETWORK_NAMES = BASE_NETWORKS + ('texture_enhancer', 'discriminator')


def _log2_ratio(big: int, small: int, what: str) -> int:
  ratio = big // small
  blocks = int(math.log(ratio, 2)) if ratio >= 1 else -1
  if small <= 0 or big % small or 2**blocks != ratio:
    raise ValueError(f'image_size / {what} = {big}/{small} must be a power of two')
  return blocks


@dataclasses.dataclass(frozen=True)
class BilayerConfig:
  """Arguments of the original that shape the networks (docs/model.md#network-widths). Defaults = paper config."""
  image_size: int = 256
  eps: float = 1e-7
  bn_momentum: float = 1.0
  # identity_embedder
  emb_num_channels: int = 64
  emb_max_channels: int = 512
  emb_output_tensor_size: int = 8
  emb_norm_layer_type: str = 'none'
  emb_activation_type: str = 'leakyrelu'
  emb_downsampling_type: str = 'avgpool'
  emb_no_stickman: bool = False
  emb_apply_masks: bool = True  # paint the source background -1 with the source mask before embedding
  # texture_generator
  tex_num_channels: int = 64
  tex_max_channels: int = 512
  tex_input_tensor_size: int = 4
  tex_norm_layer_type: str = 'ada_spade_bn'
  tex_activation_type: str = 'leakyrelu'
  tex_upsampling_type: str = 'nearest'
  tex_skip_layer_type: str = 'ada_conv'
  tex_pixelwise_bias_type: str = 'none'
  # keypoints_embedder
  pse_in_channels: int = 136
  pse_num_channels: int = 256
  pse_num_blocks: int = 4
  pse_norm_layer_type: str = 'none'
  pse_activation_type: str = 'leakyrelu'
  pse_use_harmonic_enc: bool = True
  pse_num_harmonics: int = 4
  pse_emb_source_pose: bool = True
  # inference_generator
  inf_num_channels: int = 32
  inf_max_channels: int = 256
  inf_input_tensor_size: int = 4
  inf_norm_layer_type: str = 'ada_bn'
  inf_activation_type: str = 'leakyrelu'
  inf_upsampling_type: str = 'nearest'
  inf_skip_layer_type: str = 'ada_conv'
  inf_pred_segmentation: bool = True
  # texture_enhancer
  enh_num_channels: int = 64
  enh_max_channels: int = 128
  enh_bottleneck_tensor_size: int = 128
  enh_num_blocks: int = 8
  enh_unrolling_depth: int = 4
  enh_guiding_rgb_loss_type: str = 'sse'
  enh_norm_layer_type: str = 'none'
  enh_activation_type: str = 'leakyrelu'
  enh_downsampling_type: str = 'avgpool'
  enh_upsampling_type: str = 'nearest'
  enh_detach_inputs: bool = True
  # discriminator
  dis_num_channels: int = 64
  dis_max_channels: int = 512
  dis_num_blocks: int = 6
  dis_output_tensor_size: int = 8
  dis_norm_layer_type: str = 'bn'
  dis_activation_type: str = 'leakyrelu'
  dis_downsampling_type: str = 'avgpool'
  dis_no_stickman: bool = False
  # Networks whose convs/linears carry spectral norm (the training form of the original: all six).
  spn_networks: Tuple[str, ...] = NETWORK_NAMES

  # --- derived sizes -------------------------------------------------------------------------------
  @property
  def num_enc_blocks(self) -> int:
    return _log2_ratio(self.image_size, self.emb_output_tensor_size, 'emb_output_tensor_size')

  @property
  def num_tex_blocks(self) -> int:
    return _log2_ratio(self.image_size, self.tex_input_tensor_size, 'tex_input_tensor_size')

  @property
  def num_inf_blocks(self) -> int:
    return _log2_ratio(self.image_size, self.inf_input_tensor_size, 'inf_input_tensor_size')

  @property
  def num_enh_down_blocks(self) -> int:
    return _log2_ratio(self.image_size, self.enh_bottleneck_tensor_size, 'enh_bottleneck_tensor_size')

  @property
  def num_dis_down_blocks(self) -> int:
    return _log2_ratio(self.image_size, self.dis_output_tensor_size, 'dis_output_tensor_size')

  def emb_channels(self, i: int) -> int:
    return min(int(self.emb_num_channels * 2**i), self.emb_max_channels)

  def tex_channels(self, i: int) -> int:
    return min(int(self.tex_num_channels * 2**i), self.tex_max_channels)

  def inf_channels(self, i: int) -> int:
    return min(int(self.inf_num_channels * 2**i), self.inf_max_channels)

  def spectral(self, network: str) -> bool:
    return network in self.spn_networks

  def validate(self, with_enhancer: bool = True) -> 'BilayerConfig':
    """Checks that the networks' shapes fit together (the enhancer's only if used); returns self."""
    unknown = set(self.spn_networks) - set(NETWORK_NAMES)
    if unknown:
      raise ValueError(f'spn_networks: unknown network(s) {sorted(unknown)}; expected names from {NETWORK_NAMES}')
    _ = (self.num_enc_blocks, self.num_tex_blocks, self.num_inf_blocks, self.num_dis_down_blocks)
    if with_enhancer:
      _ = self.num_enh_down_blocks
    if self.num_tex_blocks != self.num_inf_blocks:
      raise ValueError('tex_input_tensor_size and inf_input_tensor_size must give the same number of '
                       f'generator blocks (the identity embedding feeds both): {self.num_tex_blocks} vs '
                       f'{self.num_inf_blocks}')
    for i in range(self.num_tex_blocks, 0, -1):
      emb_c, tex_in, tex_out = self.emb_channels(i), self.tex_channels(i), self.tex_channels(i - 1)
      inf_in, inf_out = self.inf_channels(i), self.inf_channels(i - 1)
      embed_c = tex_out  # identity embedding k has the channels of generator level i - 1
      if tex_in * embed_c % emb_c or (tex_in * embed_c // emb_c) != tex_out:
        raise ValueError(
            f'texture projector at generator level {i}: rows = embedding channels ({embed_c}) x '
            f'tex/emb width ratio ({tex_in}/{emb_c}) must equal the texture block width {tex_out}; '
            'the original requires tex_num/max_channels == emb_num/max_channels')
      if inf_in * embed_c % emb_c or (inf_in * embed_c // emb_c) != inf_out:
        raise ValueError(
            f'inference projector at generator level {i}: rows = embedding channels ({embed_c}) x '
            f'inf/emb width ratio ({inf_in}/{emb_c}) must equal the inference block width {inf_out}; '
            'the original requires inf_num_channels/emb_num_channels == inf_max_channels/emb_max_channels')
    for field, allowed in (('emb_norm_layer_type', ('none', 'bn')), ('tex_norm_layer_type', ('ada_spade_bn',)),
                           ('inf_norm_layer_type', ('ada_bn',)), ('enh_norm_layer_type', ('none', 'bn')),
                           ('dis_norm_layer_type', ('none', 'bn')), ('pse_norm_layer_type', ('none',)),
                           ('tex_skip_layer_type', ('ada_conv',)), ('inf_skip_layer_type', ('ada_conv',)),
                           ('tex_pixelwise_bias_type', ('none',)), ('enh_guiding_rgb_loss_type', ('sse', 'l1'))):
      if getattr(self, field) not in allowed:
        raise ValueError(f'{field}={getattr(self, field)!r} is not supported; expected one of {allowed}')
    if self.tex_channels(self.num_tex_blocks) != self.tex_max_channels:
      raise ValueError(f'tex_num_channels * 2**{self.num_tex_blocks} must reach tex_max_channels '
                       f'({self.tex_max_channels}): the learned input tensor has tex_max_channels channels')
    if self.inf_channels(self.num_inf_blocks) != self.inf_max_channels:
      raise ValueError(f'inf_num_channels * 2**{self.num_inf_blocks} must reach inf_max_channels '
                       f'({self.inf_max_channels}): the pose embedding has inf_max_channels channels')
    if self.pse_num_blocks < 1:
      raise ValueError(f'pse_num_blocks must be >= 1, got {self.pse_num_blocks}')
    return self

  # --- conversion from/to the original's args.txt --------------------------------------------------
  @classmethod
  def from_args(cls, args: Dict[str, Any]) -> 'BilayerConfig':
    """Builds a config from the original's parsed arguments (unknown keys are ignored)."""
    kwargs = {}
    for field in dataclasses.fields(cls):
      if field.name not in args:
        continue
      value = args[field.name]
      if field.name == 'spn_networks':
        value = tuple(s.strip() for s in str(value).split(',') if s.strip())
      elif field.type in (bool, 'bool') and isinstance(value, str):
        value = value == 'True'
      elif field.type in (int, 'int'):
        value = int(value)
      elif field.type in (float, 'float'):
        value = float(value)
      kwargs[field.name] = value
    return cls(**kwargs)

  def to_args(self) -> Dict[str, Any]:
    """The original's argument values for this architecture (for writing args.txt)."""
    args = dataclasses.asdict(self)
    args['spn_networks'] = ', '.join(self.spn_networks)
    return args
