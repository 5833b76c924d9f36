"""Building blocks against PyTorch's own implementations (BatchNorm2d, spectral_norm, grid_sample, ...)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bilayer_jax.models import layers
from bilayer_jax.models import projector
from bilayer_jax.models import warp
from bilayer_jax.models.keypoints_embedder import harmonic_encoding

torch.set_num_threads(1)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def test_batchnorm_train_and_eval_match_torch():
  rng = np.random.default_rng(0)
  x = rng.normal(1.0, 2.0, (3, 5, 6, 4)).astype(np.float32)
  scale, bias = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.normal(size=4).astype(np.float32)
  tbn = torch.nn.BatchNorm2d(4, eps=1e-7, momentum=1.0)
  tbn.weight.data, tbn.bias.data = torch.from_numpy(scale), torch.from_numpy(bias)
  bn = layers.BatchNorm(eps=1e-7, momentum=1.0)
  variables = bn.init(jax.random.PRNGKey(0), jnp.asarray(x))
  variables = {'params': {'scale': scale, 'bias': bias}, 'batch_stats': variables['batch_stats']}
  y, state = bn.apply(variables, jnp.asarray(x), train=True, mutable=['batch_stats'])
  ty = tbn.train()(_nchw(x)).detach().numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(y, ty, atol=2e-6)
  stats = state['batch_stats']
  np.testing.assert_allclose(stats['mean'], tbn.running_mean.numpy(), rtol=1e-6)
  np.testing.assert_allclose(stats['var'], tbn.running_var.numpy(), rtol=1e-5)  # unbiased
  assert int(stats['num_batches_tracked']) == int(tbn.num_batches_tracked) == 1
  y_eval = bn.apply({**variables, 'batch_stats': stats}, jnp.asarray(x + 0.5), train=False)
  ty_eval = tbn.eval()(_nchw(x + 0.5)).detach().numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(y_eval, ty_eval, atol=2e-6)


@pytest.mark.parametrize('affine', [True, False])
def test_batchnorm_train_gradients_match_torch(affine):
  """The closed-form backward (layers.batch_norm_train) gives PyTorch BatchNorm2d's gradients."""
  rng = np.random.default_rng(2)
  x = rng.normal(1.0, 2.0, (2, 5, 6, 4)).astype(np.float32)
  g = rng.normal(size=x.shape).astype(np.float32)
  scale, bias = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.normal(size=4).astype(np.float32)
  tbn = torch.nn.BatchNorm2d(4, eps=1e-7, affine=affine).train()
  if affine:
    tbn.weight.data, tbn.bias.data = torch.from_numpy(scale), torch.from_numpy(bias)
  tx = _nchw(x).requires_grad_()
  (tbn(tx) * _nchw(g)).sum().backward()
  bn = layers.BatchNorm(affine=affine, eps=1e-7)
  variables = bn.init(jax.random.PRNGKey(0), jnp.asarray(x))
  params = {'scale': scale, 'bias': bias} if affine else {}

  def loss(x, params):
    y, _ = bn.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    return jnp.sum(y * g)

  gx, gparams = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), params)
  np.testing.assert_allclose(gx, tx.grad.numpy().transpose(0, 2, 3, 1), atol=2e-5)
  if affine:
    np.testing.assert_allclose(gparams['scale'], tbn.weight.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gparams['bias'], tbn.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_batchnorm_train_vjp_equals_autodiff_in_float64():
  """All three outputs (y, mean, variance) carry cotangents: the custom VJP equals autodiff of the forward."""
  rng = np.random.default_rng(3)
  x, scale, bias = (rng.normal(1.0, 2.0, (2, 3, 5, 4)), rng.uniform(0.5, 1.5, 4), rng.normal(size=4))
  weights = [rng.normal(size=s) for s in (x.shape, (4,), (4,))]

  def reference(x, scale, bias, eps):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias, mean, var

  def loss(fn, *args):
    return sum(jnp.sum(jnp.tanh(out) * w) for out, w in zip(fn(*args, 1e-7), weights))

  with jax.enable_x64():
    args = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
    ours = jax.grad(lambda *a: loss(layers.batch_norm_train, *a), argnums=(0, 1, 2))(*args)
    theirs = jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2))(*args)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_batchnorm_momentum_below_one_blends_statistics():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2, 2, 3)).astype(np.float32))
  bn = layers.BatchNorm(affine=False, momentum=0.25)
  v = bn.init(jax.random.PRNGKey(0), x)
  _, state = bn.apply(v, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(state['batch_stats']['mean'], 0.25 * np.asarray(x).mean((0, 1, 2)), rtol=1e-6)


@pytest.mark.parametrize('kind', ['conv3', 'conv1', 'dense'])
def test_spectral_norm_power_iteration_matches_torch(kind):
  """One power iteration per train call, eps 1e-7, eval uses stored u, v; gradient as PyTorch's."""
  torch.manual_seed(0)
  if kind == 'dense':
    tmod, x_np = torch.nn.Linear(6, 5), np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
  else:
    k = 3 if kind == 'conv3' else 1
    tmod = torch.nn.Conv2d(4, 5, k, padding=k // 2)
    x_np = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype(np.float32)
  tmod = torch.nn.utils.spectral_norm(tmod, eps=1e-7)
  u0, v0 = tmod.weight_u.clone().numpy(), tmod.weight_v.clone().numpy()
  w = tmod.weight_orig.detach().numpy()
  if kind == 'dense':
    mod, kernel = layers.Dense(5), w.T
  else:
    mod, kernel = layers.Conv2d(5, w.shape[-1]), w.transpose(2, 3, 1, 0)
  variables = {'params': {'kernel': kernel, 'bias': tmod.bias.detach().numpy()}, 'spectral': {'u': u0, 'v': v0}}
  tx = torch.from_numpy(x_np if kind == 'dense' else x_np.transpose(0, 3, 1, 2))
  ours = jnp.asarray(x_np)

  def loss(params, spectral):
    y, state = mod.apply({'params': params, 'spectral': spectral}, ours, train=True, mutable=['spectral'])
    return jnp.sum(y**2), (y, state)

  (_, (y, state)), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'], variables['spectral'])
  tmod.train()
  ty = tmod(tx)
  (ty**2).sum().backward()
  ty = ty.detach().numpy()
  ty = ty if kind == 'dense' else ty.transpose(0, 2, 3, 1)
  np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(state['spectral']['u'], tmod.weight_u.numpy(), atol=1e-6)
  np.testing.assert_allclose(state['spectral']['v'], tmod.weight_v.numpy(), atol=1e-6)
  tgrad = tmod.weight_orig.grad.numpy()
  tgrad = tgrad.T if kind == 'dense' else tgrad.transpose(2, 3, 1, 0)
  np.testing.assert_allclose(grads['kernel'], tgrad, rtol=1e-4, atol=1e-4)
  # Eval: no iteration, stored vectors.
  tmod.eval()
  with torch.no_grad():
    ty_eval = tmod(tx).numpy()
  ty_eval = ty_eval if kind == 'dense' else ty_eval.transpose(0, 2, 3, 1)
  y_eval = mod.apply({'params': variables['params'], 'spectral': state['spectral']}, ours, train=False)
  np.testing.assert_allclose(y_eval, ty_eval, rtol=1e-5, atol=1e-5)


def test_spectral_norm_standing_statistics_mode_does_not_iterate():
  mod = layers.Conv2d(3, 3)
  x = jnp.ones((1, 4, 4, 2))
  v = mod.init(jax.random.PRNGKey(0), x)
  # train=True with only batch_stats mutable (the standing-statistics pass): u, v stay.
  _, state = mod.apply(v, x, train=True, mutable=['batch_stats'])
  assert 'spectral' not in state


def test_grid_sample_matches_torch_including_outside_samples():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(2, 7, 9, 3)).astype(np.float32)
  grid = rng.uniform(-1.4, 1.4, size=(2, 5, 6, 2)).astype(np.float32)
  grid[0, 0, :4] = [[-1, -1], [1, 1], [-1.0 - 1 / 9, 0.0], [0.5, 1 + 1 / 7]]  # edges and half-pixel borders
  ours = warp.grid_sample(jnp.asarray(image), jnp.asarray(grid))
  ref = torch.nn.functional.grid_sample(_nchw(image), torch.from_numpy(grid), mode='bilinear',
                                        padding_mode='zeros', align_corners=False)
  np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-6)


def test_grid_sample_shared_matches_torch_far_outside_too():
  # The shared-texture form clamps corners onto a zero border instead of masking them: check samples on
  # the edges, half a pixel out, and far outside (several texels beyond the border).
  rng = np.random.default_rng(3)
  image = rng.normal(size=(7, 9, 3)).astype(np.float32)
  grid = rng.uniform(-3, 3, size=(2, 5, 6, 2)).astype(np.float32)
  grid[0, 0, :4] = [[-1, -1], [1, 1], [-1.0 - 1 / 9, 0.0], [0.5, 1 + 1 / 7]]
  ours = warp.grid_sample_shared(jnp.asarray(image), jnp.asarray(grid))
  ref = torch.nn.functional.grid_sample(_nchw(np.stack([image, image])), torch.from_numpy(grid), mode='bilinear',
                                        padding_mode='zeros', align_corners=False)
  np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-6)


def test_grid_sample_gradients_match_torch():
  rng = np.random.default_rng(1)
  image = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
  grid = rng.uniform(-1.2, 1.2, size=(1, 4, 4, 2)).astype(np.float32)
  weights = rng.normal(size=(1, 4, 4, 2)).astype(np.float32)
  gi, gg = jax.grad(lambda i, g: jnp.sum(warp.grid_sample(i, g) * weights), argnums=(0, 1))(image, grid)
  ti = _nchw(image).requires_grad_()
  tg = torch.from_numpy(grid).requires_grad_()
  out = torch.nn.functional.grid_sample(ti, tg, align_corners=False)
  (out * _nchw(weights)).sum().backward()
  np.testing.assert_allclose(gi, ti.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5)
  np.testing.assert_allclose(gg, tg.grad.numpy(), atol=1e-4)


def test_identity_grid_is_an_exact_identity_warp():
  image = np.random.default_rng(2).normal(size=(1, 16, 16, 3)).astype(np.float32)
  out = warp.grid_sample(jnp.asarray(image), jnp.asarray(warp.identity_grid(16)))
  np.testing.assert_array_equal(out, image)


def test_harmonic_encoding_layout():
  poses = jnp.asarray([[0.25, -0.5]], jnp.float32)
  enc = np.asarray(harmonic_encoding(poses, 4))
  freqs = np.float32(np.pi) * 2.0**np.arange(4)
  scaled = (np.asarray(poses)[..., None] * freqs).reshape(1, -1)  # coordinate-major, frequency fastest
  np.testing.assert_allclose(enc, np.concatenate([np.sin(scaled), np.cos(scaled)], 1), atol=1e-6)


@pytest.mark.parametrize('in_size,out_size', [(8, 32), (8, 16), (8, 8), (8, 3), (6, 4)])
def test_adaptive_avg_pool_matches_torch(in_size, out_size):
  x = np.random.default_rng(3).normal(size=(2, 3, in_size, in_size)).astype(np.float32)
  ours = projector.adaptive_avg_pool_nchw(jnp.asarray(x), out_size)
  ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), out_size).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_resampling_helpers():
  x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  np.testing.assert_allclose(layers.avg_pool2x(jnp.asarray(x)),
                             torch.nn.functional.avg_pool2d(_nchw(x), 2).numpy().transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(
      layers.upsample_nearest2x(jnp.asarray(x)),
      torch.nn.functional.interpolate(_nchw(x), scale_factor=2, mode='nearest').numpy().transpose(0, 2, 3, 1))


def test_adaptive_conv_repeats_identity_weights_over_frames():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(6, 2, 2, 3)).astype(np.float32)  # B=2 identities x T=3 frames
  w, b = rng.normal(size=(2, 4, 3)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32)
  y = np.asarray(layers.adaptive_conv1x1(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b)))
  for frame in range(6):
    ident = frame // 3
    np.testing.assert_allclose(y[frame], x[frame] @ w[ident].T + b[ident], rtol=1e-5, atol=1e-5)
