"""texture_generator (docs/model.md#texture-generator) and inference_generator (docs/model.md#inference-generator).

Both are stacks of up-sampling residual blocks whose norms and skip convs take per-identity parameters
from a projector (`projector.py`):
* texture_generator: a learned (4, 4, 512) input, AdaSPADE norms, nearest upsampling before the first
  conv, final AdaSPADE + LeakyReLU, head conv3x3 -> tanh: the high-frequency texture (runs once per avatar).
* inference_generator: the pose embedding as input, AdaBN norms, "efficient" upsampling after the first
  conv, final AdaBN + LeakyReLU, heads: delta-uv (tanh), low-frequency rgb (tanh), segmentation logits.
  The per-frame network; its projector runs once per avatar (`project` and `generate` are separate).
"""

from typing import List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.models import blocks
from bilayer_jax.models import layers
from bilayer_jax.models.config import BilayerConfig
from bilayer_jax.models.projector import Projector

Array = jax.Array
AdaptiveParams = Sequence[Tuple[Array, Array]]


class Generator(nn.Module):
  """`gen_tex` (kind='tex') or `gen_inf` (kind='inf')."""
  cfg: BilayerConfig
  kind: str
  spectral: bool = True
  dtype: jnp.dtype = jnp.float32

  def _settings(self):
    cfg = self.cfg
    if self.kind == 'tex':
      return dict(num_blocks=cfg.num_tex_blocks, channels=cfg.tex_channels, norm=cfg.tex_norm_layer_type,
                  activation=cfg.tex_activation_type, skip=cfg.tex_skip_layer_type, efficient=False,
                  size=cfg.tex_input_tensor_size, heads=((3, 'tanh'),))
    heads = ((2, 'tanh'), (3, 'tanh')) + (((1, None),) if cfg.inf_pred_segmentation else ())
    return dict(num_blocks=cfg.num_inf_blocks, channels=cfg.inf_channels, norm=cfg.inf_norm_layer_type,
                activation=cfg.inf_activation_type, skip=cfg.inf_skip_layer_type, efficient=True,
                size=1, heads=heads)

  @nn.compact
  def __call__(self, x: Array, adaptive: AdaptiveParams, train: bool = False) -> List[Array]:
    cfg, s = self.cfg, self._settings()
    # AdaSPADE needs the spatial size of each norm's input; AdaBN does not (the original passes 1).
    size = s['size']
    out_channels = s['channels'](s['num_blocks'])
    consumed = 0
    for k, i in enumerate(range(s['num_blocks'] - 1, -1, -1)):
      in_channels, out_channels = out_channels, s['channels'](i)
      block = blocks.ResBlock(
          in_channels, out_channels, norm=s['norm'], activation=s['activation'], resize='up',
          skip_type=s['skip'], efficient_upsampling=s['efficient'], first_norm_is_not_adaptive=k == 0,
          spatial_size=size, eps=cfg.eps, bn_momentum=cfg.bn_momentum, spectral=self.spectral,
          dtype=self.dtype, name=f'blocks_{k}')
      x = block(x, adaptive[consumed:consumed + block.num_adaptive], train=train)
      consumed += block.num_adaptive
      if self.kind == 'tex':
        size *= 2
    num_final = blocks.num_norm_adaptive(s['norm'])
    if consumed + num_final != len(adaptive):
      raise ValueError(f'{self.name}: got {len(adaptive)} adaptive parameter sets, the blocks use '
                       f'{consumed + num_final}')
    final_norm = blocks.AdaptiveNorm(s['norm'], spatial_size=size, eps=cfg.eps, momentum=cfg.bn_momentum,
                                     name=f'blocks_{s["num_blocks"]}')
    x = final_norm(x, adaptive[consumed:], train)
    x = layers.activation(s['activation'])(x)
    # The heads are separate convs (as the original's parameters) computed as ONE conv with all their
    # output channels: one pass over the full-resolution features instead of one per head.
    weights = [layers.Conv2d(features, 3, spectral=self.spectral, eps=cfg.eps, dtype=self.dtype,
                             name=f'heads_{h}_0')(x, train, weights_only=True)
               for h, (features, _) in enumerate(s['heads'])]
    kernel = jnp.concatenate([k for k, _ in weights], axis=-1).astype(self.dtype)
    bias = jnp.concatenate([b for _, b in weights]).astype(self.dtype)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel, window_strides=(1, 1),
                                     padding=[(1, 1), (1, 1)], dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias
    outputs, start = [], 0
    for features, head_act in s['heads']:
      out = y[..., start:start + features]
      outputs.append(jnp.tanh(out) if head_act == 'tanh' else out)
      start += features
    return outputs


class TextureGenerator(nn.Module):
  """identity embeddings -> high-frequency texture (B, S, S, 3) in [-1, 1]."""
  cfg: BilayerConfig
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    cfg = self.cfg
    spectral = cfg.spectral('texture_generator')
    size = cfg.tex_input_tensor_size
    self.gen_tex_input = self.param('gen_tex_input', nn.initializers.normal(1.0),
                                    (1, size, size, cfg.tex_max_channels))
    self.gen_tex = Generator(cfg, 'tex', spectral, self.dtype)
    self.prj_tex = Projector(cfg, 'tex', spectral, self.dtype)

  def __call__(self, embeds: Sequence[Array], train: bool = False) -> Tuple[Array, AdaptiveParams]:
    """Returns the texture and the projector's adaptive parameters (for inspection)."""
    adaptive = self.prj_tex(embeds, train)
    b = embeds[0].shape[0]
    inputs = jnp.broadcast_to(self.gen_tex_input, (b,) + self.gen_tex_input.shape[1:]).astype(self.dtype)
    return self.gen_tex(inputs, adaptive, train)[0], adaptive


class InferenceGenerator(nn.Module):
  """pose embeddings + per-avatar adaptive parameters -> (delta_uv, lf_rgb, seg_logits)."""
  cfg: BilayerConfig
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    spectral = self.cfg.spectral('inference_generator')
    self.gen_inf = Generator(self.cfg, 'inf', spectral, self.dtype)
    self.prj_inf = Projector(self.cfg, 'inf', spectral, self.dtype)

  def project(self, embeds: Sequence[Array], train: bool = False):
    """Per-avatar part: identity embeddings -> adaptive parameters (run once per avatar)."""
    return self.prj_inf(embeds, train)

  def generate(self, pose_embeds: Array, adaptive: AdaptiveParams, train: bool = False) -> List[Array]:
    """Per-frame part: (B*T, 4, 4, C) pose embeddings -> [delta_uv, lf_rgb, (seg_logits)] at full size."""
    return self.gen_inf(pose_embeds, adaptive, train)

  def __call__(self, embeds: Sequence[Array], pose_embeds: Array, train: bool = False) -> List[Array]:
    return self.generate(pose_embeds, self.project(embeds, train), train)
