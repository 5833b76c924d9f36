"""Fast host-side (numpy) initialisation of the networks' variables.

`Module.init` traces a whole forward pass; under jit that graph takes minutes to compile on a CPU (hundreds
of random initialisers plus the unrolled enhancer), and eagerly it compiles hundreds of small kernels. The
variables' shapes come from `jax.eval_shape` instead (no compilation) and their values from numpy with the
same distributions as the modules' initialisers (PyTorch defaults, docs/model.md#spectral-norm-and-initialisation):
  kernel          U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = prod(kernel.shape[:-1])
  bias            same bound as its layer's kernel; a BatchNorm bias (no kernel beside it) is 0
  scale           1 (BatchNorm)
  pixel_feats     U(-1/sqrt(C*S*S), +) (kaiming-uniform a=sqrt(5) of a (1, C, S, S) tensor)
  gen_tex_input   N(0, 1)
  mean/var        0 / 1, num_batches_tracked 0
  spectral u, v   random unit vectors refined by 3 power iterations (as `layers.spectral_normalize` at init)
`tests/test_host_init.py` checks these against the modules' own `init`.
"""

from typing import Any, Dict, Mapping

import jax
import numpy as np

INIT_POWER_ITERATIONS = 3


def _weight_matrix(kernel: np.ndarray) -> np.ndarray:
  """PyTorch's (out, -1) matrix of a Flax kernel (HWIO conv or (in, out) dense)."""
  if kernel.ndim == 4:
    return kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[-1], -1)
  return kernel.T


def _unit(x: np.ndarray, eps: float) -> np.ndarray:
  return x / max(float(np.linalg.norm(x)), eps)


def _init_module(values: Dict[str, Any], shapes: Mapping[str, Any], rng: np.random.Generator, eps: float):
  """Fills the leaves of ONE module (one level of the params/batch_stats/spectral trees)."""
  kernel_shape = shapes['params'].get('kernel')
  kernel_shape = None if kernel_shape is None or isinstance(kernel_shape, Mapping) else kernel_shape.shape
  for name, leaf in shapes['params'].items():
    if isinstance(leaf, Mapping):
      continue
    shape = leaf.shape
    if name == 'kernel' or (name == 'bias' and kernel_shape is not None):
      bound = 1.0 / np.sqrt(np.prod(kernel_shape[:-1]))
      value = rng.uniform(-bound, bound, shape)
    elif name == 'bias':
      value = np.zeros(shape)
    elif name == 'scale':
      value = np.ones(shape)
    elif name == 'pixel_feats':
      value = rng.uniform(-1, 1, shape) / np.sqrt(np.prod(shape[1:]))
    elif name == 'gen_tex_input':
      value = rng.standard_normal(shape)
    else:
      raise KeyError(f'no host initialiser for parameter {name!r}')
    values['params'][name] = value.astype(leaf.dtype)
  for name, leaf in shapes['batch_stats'].items():
    if not isinstance(leaf, Mapping):
      value = np.ones(leaf.shape) if name == 'var' else np.zeros(leaf.shape)
      values['batch_stats'][name] = value.astype(leaf.dtype)
  if 'u' in shapes['spectral'] and not isinstance(shapes['spectral']['u'], Mapping):
    w = _weight_matrix(values['params']['kernel'].astype(np.float64))
    u = _unit(rng.standard_normal(w.shape[0]), eps)
    v = _unit(rng.standard_normal(w.shape[1]), eps)
    for _ in range(INIT_POWER_ITERATIONS):
      v = _unit(w.T @ u, eps)
      u = _unit(w @ v, eps)
    values['spectral']['u'] = u.astype(np.float32)
    values['spectral']['v'] = v.astype(np.float32)


def _walk(values, shapes, rng, eps):
  _init_module(values, shapes, rng, eps)
  children = set()
  for collection in shapes:
    children |= {k for k, v in shapes[collection].items() if isinstance(v, Mapping)}
  for child in sorted(children):
    sub_shapes = {c: shapes[c].get(child, {}) for c in shapes}
    sub_values = {c: values[c].setdefault(child, {}) if child in shapes[c] else {} for c in shapes}
    _walk(sub_values, sub_shapes, rng, eps)


def initialize(abstract_variables: Mapping[str, Any], seed: int, eps: float = 1e-7) -> Dict[str, Any]:
  """numpy variables {collection: tree} for a module's abstract variables (e.g. from jax.eval_shape)."""
  shapes = {c: dict(abstract_variables.get(c, {})) for c in ('params', 'batch_stats', 'spectral')}
  values: Dict[str, Dict[str, Any]] = {c: {} for c in shapes}
  _walk(values, shapes, np.random.default_rng(seed), eps)
  return {c: v for c, v in values.items() if v or c in abstract_variables}


def initialize_like(abstract_variables: Mapping[str, Any], seed: int, eps: float = 1e-7) -> Any:
  """`initialize`, checked to have exactly the abstract tree's structure, shapes and dtypes."""
  values = initialize(abstract_variables, seed, eps)
  expected = jax.tree_util.tree_structure(dict(abstract_variables))
  got = jax.tree_util.tree_structure(values)
  if expected != got:
    raise AssertionError(f'host init structure mismatch:\n{expected}\nvs\n{got}')
  for a, b in zip(jax.tree_util.tree_leaves(dict(abstract_variables)), jax.tree_util.tree_leaves(values)):
    if tuple(a.shape) != b.shape or a.dtype != b.dtype:
      raise AssertionError(f'host init leaf {b.shape} {b.dtype} != {a.shape} {a.dtype}')
  return values

