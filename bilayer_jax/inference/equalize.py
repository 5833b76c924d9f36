"""Per-channel equalisation of a folded per-frame network before 8-bit activation quantisation.

Integer TFLite quantises each activation tensor with ONE scale for all its channels. In the folded
network the channels of a tensor can span very different ranges (the adaptive norms scale each channel by
the avatar's own gamma; docs/benchmarks.md#quantised-export-quality), and then the per-tensor scale is set
by the widest channels while the narrow ones keep only a few of their 256 levels.

Every such tensor sits between linear maps and positively homogeneous LeakyReLUs (leaky(s x) = s leaky(x)
for s > 0), so channel c can be multiplied by s_c > 0 where it is produced and divided by s_c where it is
consumed without changing the function (Nagel et al., "Data-Free Quantization Through Weight Equalization
and Bias Correction", ICCV 2019, cross-layer equalisation; here with measured activation ranges). With
s_c = range_c ** -strength (geometric mean 1), strength 1 gives every channel the same activation range and
0 changes nothing; in between it splits the spread between the activation and the weights of the consumer,
which are quantised per output channel, so an input channel scaled up there costs weight precision.

Rescaled tensors (names of `folding.frame_forward`'s taps):
* `stream<k>`: the residual stream entering block k: produced by the keypoint MLP's last layer (k = 0) or by
  block k-1's second conv and skip conv, consumed by block k's first norm and skip conv (the final norm for
  k = num_blocks);
* `block<k>_norm1`: the first norm's output, consumed by the first conv through a LeakyReLU;
* `block<k>_conv1`: the first conv's output (with the folded second norm), consumed by the second conv;
* `final`: the final norm's output, consumed by the heads.
"""

from typing import Dict, Mapping

import numpy as np

from bilayer_jax.inference import folding

# The balance point of cross-layer equalisation: 0 leaves the network alone, 1 moves every activation
# channel's range into the consumer's per-channel weight scales. Exports try several and keep the best per
# avatar (tflite_export.EQUALISATION_STRENGTHS); this default is the even split.
DEFAULT_STRENGTH = 0.5
RANGE_CHUNK = 8  # poses per forward when measuring ranges (the taps of 8 poses at 256^2: ~0.3 GB)


def channel_ranges(net: folding.FoldedFrameNet, poses: np.ndarray) -> Dict[str, np.ndarray]:
  """Per-channel max |value| of every rescalable tensor over `poses` (float64, one entry per tap)."""
  poses = np.asarray(poses, np.float32).reshape(-1, 136)
  ranges: Dict[str, np.ndarray] = {}
  for start in range(0, len(poses), RANGE_CHUNK):
    taps: Dict[str, np.ndarray] = {}
    folding.frame_forward(net.spec, net.arrays, poses[start:start + RANGE_CHUNK], taps=taps)
    for name, value in taps.items():
      chunk = np.abs(np.asarray(value, np.float64)).reshape(-1, value.shape[-1]).max(axis=0)
      ranges[name] = np.maximum(ranges[name], chunk) if name in ranges else chunk
  return ranges


def _factors(ranges: np.ndarray, strength: float) -> np.ndarray:
  """s_c = range_c ** -strength, normalised to geometric mean 1; channels that never fire keep s_c = 1."""
  live = ranges > 1e-12 * max(float(ranges.max()), 1e-30)
  scales = np.ones_like(ranges)
  if live.any():
    scales[live] = ranges[live] ** -strength
    scales[live] /= np.exp(np.log(scales[live]).mean())
  return scales


def equalize(net: folding.FoldedFrameNet, poses: np.ndarray,
             strength: float = DEFAULT_STRENGTH) -> folding.FoldedFrameNet:
  """The same function as `net` with its quantised tensors' channel ranges evened out (see the module doc).

  Args:
    net: a folded per-frame network.
    poses: (K, 136) representative keypoints (the int8 calibration set) for measuring the ranges.
    strength: in [0, 1]; 0 returns an identical network.
  """
  if not 0 <= strength <= 1:
    raise ValueError(f'equalisation strength {strength}: expected a value in [0, 1]')
  spec = net.spec
  ranges = channel_ranges(net, poses)
  a = {k: np.array(v, np.float64) for k, v in net.arrays.items()}

  def rescale(name: str, produced: Mapping[str, int], consumed: Mapping[str, int]) -> None:
    """Multiplies tensor `name`'s channels by s where it is produced ({array: channel axis}) and divides
    them where it is consumed."""
    scales = _factors(ranges[name], strength)
    for arrays_axes, power in ((produced, 1), (consumed, -1)):
      for array, axis in arrays_axes.items():
        shape = [1] * a[array].ndim
        shape[axis] = -1
        a[array] *= (scales ** power).reshape(shape)

  # The MLP's output (C * P * P,) is read as (C, P, P): channel c of stream0 is a run of P * P entries.
  stream0 = _factors(ranges['stream0'], strength).repeat(spec.pose_size ** 2)
  last_mlp = f'mlp{spec.num_mlp_layers - 1}'
  a[f'{last_mlp}_kernel'] *= stream0
  a[f'{last_mlp}_bias'] *= stream0
  for k in range(spec.num_blocks + 1):
    produced = {} if k == 0 else {f'block{k - 1}_conv2_kernel': 3, f'block{k - 1}_conv2_bias': 0,
                                  f'block{k - 1}_skip_kernel': 1, f'block{k - 1}_skip_bias': 0}
    consumed = ({f'block{k}_norm1_scale': 0, f'block{k}_skip_kernel': 0} if k < spec.num_blocks
                else {'final_scale': 0})
    rescale(f'stream{k}', produced, consumed)
  for k in range(spec.num_blocks):
    rescale(f'block{k}_norm1', {f'block{k}_norm1_scale': 0, f'block{k}_norm1_shift': 0},
            {f'block{k}_conv1_kernel': 2})
    rescale(f'block{k}_conv1', {f'block{k}_conv1_kernel': 3, f'block{k}_conv1_bias': 0},
            {f'block{k}_conv2_kernel': 2})
  rescale('final', {'final_scale': 0, 'final_shift': 0}, {'heads_kernel': 2})
  return folding.FoldedFrameNet(spec, {k: v.astype(np.float32) for k, v in a.items()})
