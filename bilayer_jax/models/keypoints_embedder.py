"""keypoints_embedder (docs/model.md#keypoints-embedder): 68 keypoints (136 values in [-1, 1]) -> pose tensor (4, 4, C).

With the harmonic encoding (ON in the paper config, see docs/original_bugs.md#boolean-flags-that-cannot-be-switched-off)
every coordinate p becomes [sin(p * pi * 2^j), cos(p * pi * 2^j)], j = 0..3, frequency fastest and the sin
block first (136 -> 1088). An MLP without norms follows; its output is read as a channel-major (C, 4, 4) tensor.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.models import layers
from bilayer_jax.models.config import BilayerConfig

Array = jax.Array


def harmonic_frequencies(num_harmonics: int) -> np.ndarray:
  """pi * 2^j in float32, exactly the original's `frequencies` buffer (flattened)."""
  return (np.float32(np.pi) * (2.0 ** np.arange(num_harmonics))).astype(np.float32)


def harmonic_encoding(poses: Array, num_harmonics: int) -> Array:
  """(N, D) -> (N, 2 * D * num_harmonics) = [sin(...), cos(...)] with the frequency varying fastest."""
  scaled = (poses[..., None] * jnp.asarray(harmonic_frequencies(num_harmonics))).reshape(poses.shape[0], -1)
  return jnp.concatenate([jnp.sin(scaled), jnp.cos(scaled)], axis=1)


class PoseEmbedder(nn.Module):
  """The original's `PoseEmbedder` MLP (`keypoints_embedder.net`); layer names follow its indices."""
  cfg: BilayerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, train: bool = False) -> Array:
    cfg = self.cfg
    act = layers.activation(cfg.pse_activation_type)
    dense_kw = dict(spectral=cfg.spectral('keypoints_embedder'), eps=cfg.eps, dtype=self.dtype)
    channels, size = cfg.inf_max_channels, cfg.inf_input_tensor_size
    out_features = channels * size * size
    hidden = out_features if cfg.pse_num_blocks == 1 else cfg.pse_num_channels
    widths = [hidden] * (cfg.pse_num_blocks - 1) + [out_features]
    x = inputs
    for i, width in enumerate(widths):
      if i:
        x = act(x)
      x = layers.Dense(width, name=f'mlp_{2 * i}', **dense_kw)(x, train)
    # Channel-major reading of the output vector, as PyTorch's view(-1, C, S, S).
    return x.reshape(-1, channels, size, size).transpose(0, 2, 3, 1)


class KeypointsEmbedder(nn.Module):
  """Keypoints (N, 136) -> pose embeddings (N, S, S, inf_max_channels)."""
  cfg: BilayerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, poses: Array, train: bool = False) -> Array:
    if poses.shape[-1] != self.cfg.pse_in_channels:
      raise ValueError(f'keypoints_embedder expects {self.cfg.pse_in_channels} keypoint values per frame, '
                       f'got {poses.shape[-1]}')
    inputs = poses.reshape(-1, poses.shape[-1])
    if self.cfg.pse_use_harmonic_enc:
      inputs = harmonic_encoding(inputs, self.cfg.pse_num_harmonics)
    embeds = PoseEmbedder(self.cfg, self.dtype, name='net')(inputs, train)
    return embeds.reshape(poses.shape[:-1] + embeds.shape[1:])
