"""bench/step_profile.py's census: it finds, rebuilds and times every convolution and dot of a compiled step."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
import step_profile  # pylint: disable=g-import-not-at-top,wrong-import-position


def _tiny_step_hlo(dtype=jnp.float32) -> str:
  """A conv + dense model's gradient w.r.t. its weights and its input, compiled: forward, input-gradient and
  kernel-gradient convolutions and dots."""

  def loss(params, x):
    y = jax.lax.conv_general_dilated(x.astype(dtype), params['conv'].astype(dtype), (1, 1), [(1, 1), (1, 1)],
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(jnp.tanh(y.reshape(-1, 8) @ params['dense'].astype(dtype)).astype(jnp.float32))

  rng = np.random.default_rng(0)
  params = {'conv': rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
            'dense': rng.normal(size=(8, 5)).astype(np.float32)}
  x = rng.normal(size=(2, 16, 16, 4)).astype(np.float32)
  return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_census_covers_every_convolution_and_dot_kind(dtype):
  """Every kind is found and timed, in float32 and in the bfloat16 configs' dtype."""
  hlo = _tiny_step_hlo(dtype)
  result = step_profile.census(hlo)
  counts, seconds = result['counts'], result['seconds']
  assert counts.get('convolution forward', 0) >= 1
  assert counts.get('convolution input gradient', 0) >= 1
  assert counts.get('convolution kernel gradient', 0) >= 1  # a 16x16 window over the input: dW
  assert counts.get('dot', 0) >= 1
  assert sum(counts.values()) == hlo.count(' convolution(') + hlo.count(' dot(')
  assert all(s > 0 for s in seconds.values()) and set(seconds) == set(counts)
  assert 1 <= result['distinct_ops'] <= sum(counts.values())


def test_rebuilt_convolution_computes_what_the_hlo_op_computes():
  """The rebuilt op of a kernel-gradient convolution is the weight gradient itself."""
  hlo = _tiny_step_hlo()
  shapes = {m.group(1): tuple(step_profile._ints(m.group(3), ',')) for m in step_profile._SHAPE.finditer(hlo)}
  match = next(m for m in step_profile._CONV.finditer(hlo)
               if step_profile._conv_op(m.group(4), shapes[m.group(2)])[1] == 'convolution kernel gradient')
  fn, _ = step_profile._conv_op(match.group(4), shapes[match.group(2)])
  out = fn(*(jnp.zeros(shapes[match.group(i)], jnp.float32) for i in (2, 3)))
  assert sorted(out.shape) == sorted((3, 3, 4, 8))
