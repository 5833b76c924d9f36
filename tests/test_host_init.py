"""The numpy initialisation follows the modules' own initialisers (same tree, shapes, dtypes, distributions)."""

import jax
import numpy as np

from bilayer_jax.convert import torch_names
from bilayer_jax.models import host_init
from bilayer_jax.models.bilayer import BilayerGenerator
from bilayer_jax.models.discriminator import Discriminator

from test_models import TINY, _batch

MICRO = TINY.__class__(**{**TINY.__dict__, 'image_size': 16, 'enh_bottleneck_tensor_size': 8,
                          'enh_num_blocks': 1, 'dis_num_blocks': 2})


def _pairs():
  gen, disc = BilayerGenerator(MICRO), Discriminator(MICRO)
  batch = _batch(MICRO, 1, 1, 1)
  init_gen = lambda: gen.init(jax.random.PRNGKey(0), batch, pred_source_data=True, enhance=True)
  s = MICRO.image_size
  frame = np.zeros((1, s, s, 3), np.float32)
  init_dis = lambda: disc.init(jax.random.PRNGKey(1), frame, frame)
  for fn in (init_gen, init_dis):
    yield jax.jit(fn)(), host_init.initialize_like(jax.eval_shape(fn), seed=3)


def test_host_init_matches_module_initialisers():
  for flax_vars, host_vars in _pairs():
    flat_flax = {c: torch_names.flatten(flax_vars[c]) for c in flax_vars}
    flat_host = {c: torch_names.flatten(host_vars[c]) for c in host_vars}
    assert flat_flax.keys() == flat_host.keys()
    for collection in flat_flax:
      assert flat_flax[collection].keys() == flat_host[collection].keys()
      for path, ref in flat_flax[collection].items():
        ours, ref = np.asarray(flat_host[collection][path]), np.asarray(ref)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype, path
        leaf = path[-1]
        if leaf in ('scale', 'mean', 'var', 'num_batches_tracked') or (leaf == 'bias' and ref.ndim == 1 and
                                                                       not ref.any()):
          np.testing.assert_array_equal(ours, ref, err_msg=str(path))  # constants
        elif leaf in ('u', 'v'):
          np.testing.assert_allclose(np.linalg.norm(ours), 1, rtol=1e-5)
        elif leaf == 'gen_tex_input':
          assert abs(ours.std() - 1) < 0.2 and abs(ref.std() - 1) < 0.2
        else:  # uniform(-b, b): same bound b, and the values fill it
          bound = max(np.abs(ref).max(), np.abs(ours).max())
          assert np.abs(ours).max() <= bound * 1.0001 and np.abs(ref).max() <= bound * 1.0001, path
          if ref.size >= 64:
            assert 0.8 * bound < np.abs(ours).max() and 0.8 * bound < np.abs(ref).max(), path
            # E|U(-b, b)| = b / 2, with relative standard error 0.58 / sqrt(n) per sample mean.
            tolerance = 5 * 0.58 / np.sqrt(ref.size)
            for values in (ours, ref):
              assert abs(np.abs(values).mean() / (bound / 2) - 1) < tolerance, path


def test_host_init_spectral_sigma_is_positive():
  for _, host_vars in _pairs():
    params, spectral = torch_names.flatten(host_vars['params']), torch_names.flatten(host_vars['spectral'])
    for path, u in spectral.items():
      if path[-1] != 'u':
        continue
      kernel = params[path[:-1] + ('kernel',)]
      w = kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[-1], -1) if kernel.ndim == 4 else kernel.T
      sigma = u @ w @ spectral[path[:-1] + ('v',)]
      assert sigma > 0.5 * np.linalg.norm(w, 2), path  # close to the top singular value after 3 iterations
