"""Training configs: the paper values, one typed conversion, overrides from the command line, typos fail,
bfloat16 trains."""

import dataclasses
import functools

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_flags

from bilayer_jax import config as config_lib
from bilayer_jax.families.bilayer import objective as step_lib
from bilayer_jax.families.bilayer import setup
from bilayer_jax.models.config import BASE_NETWORKS

import train_utils
from configs import demo, paper_base, paper_enhancer


def test_paper_configs_hold_the_spec_values():
  base = paper_base.get_config()
  cfg = setup.step_config(base, 'base')
  assert (base.model.image_size, base.batch_size, cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps) == (
      256, 40, 0.5, 0.999, 1e-7)
  assert dict(cfg.lrs) == {n: 2e-4 for n in BASE_NETWORKS + ('discriminator',)}
  losses = cfg.losses
  assert (losses.adv_loss_weight, losses.fem_loss_weight, losses.pix_loss_weight, losses.seg_loss_weight,
          losses.wpr_loss_weight) == (0.5, 10.0, 10.0, 10.0, 0.0)
  assert dict(losses.perceptual)['vgg19_imagenet_pytorch'] == 10.0
  assert dict(losses.perceptual)['vgg16_face_caffe'] == 0.01
  assert cfg.model.pse_use_harmonic_enc and cfg.networks_to_train[-1] == 'discriminator'
  enh = setup.step_config(paper_enhancer.get_config(), 'enhancer')
  assert enh.networks_to_train == ('texture_enhancer', 'discriminator')
  assert enh.fake_key == 'pred_enh_target_imgs'  # D and perceptual loss judge the enhanced image


def test_bad_config_values_fail_with_a_clear_message():
  config = demo.get_config('base')
  config.networks_to_train = ('identity_embedder', 'discriminatr')
  with pytest.raises(ValueError, match='discriminatr'):
    setup.step_config(config, 'base')
  config = demo.get_config('base')
  config.train.dtype = 'float16'
  with pytest.raises(ValueError, match='float16'):
    setup.step_config(config, 'base')


def _parse(*overrides):
  """Parses a command line the way run.py does (config_flags, locked config)."""
  argv = ['run.py', f'--config={train_utils.REPO / "configs" / "demo.py"}:base', *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def test_command_line_overrides_and_typos():
  config = _parse('--config.num_steps=7', '--config.model.image_size=128', '--config.mesh.fsdp=True')
  assert (config.num_steps, config.model.image_size, config.mesh.fsdp, config.stage) == (7, 128, True, 'base')
  with pytest.raises(Exception, match='num_stepz'):
    _parse('--config.num_stepz=7')
  with pytest.raises(Exception, match='num_steps'):
    _parse('--config.num_steps=many')


def test_the_config_files_start_from_the_typed_defaults():
  assert config_lib.from_config_dict(paper_base.get_config()) == config_lib.RunConfig()
  enhancer = config_lib.from_config_dict(paper_enhancer.get_config())
  assert (enhancer.stage, enhancer.networks_to_train, enhancer.standing_stats.enabled) == (
      'enhancer', ('texture_enhancer', 'discriminator'), False)
  typed = config_lib.from_config_dict(demo.get_config())
  assert config_lib.from_config_dict(typed) is typed
  assert isinstance(typed.eval.metrics, tuple) and isinstance(typed.loss.per_layer_weights[0], float)
  with pytest.raises(dataclasses.FrozenInstanceError):
    typed.batch_size = 3  # pytype: disable=attribute-error


def test_list_fields_from_the_command_line_are_tuples():
  config = _parse('--config.networks_to_train=identity_embedder,discriminator',
                  "--config.eval.metrics=('psnr', 'ssim')", '--config.loss.per_layer_weights=(1, 1, 1, 1, 2)')
  typed = config_lib.from_config_dict(config)
  assert typed.networks_to_train == ('identity_embedder', 'discriminator')  # arrives as ('a,b',)
  assert typed.eval.metrics == ('psnr', 'ssim')
  assert typed.loss.per_layer_weights == (1.0, 1.0, 1.0, 1.0, 2.0)


def test_the_conversion_names_every_unknown_or_mistyped_field():
  fields = config_lib.as_dict(config_lib.RunConfig())
  fields['log']['every_stepz'] = 3
  fields['batch_size'] = 'forty'
  fields['model']['image_size'] = 64.5
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.from_config_dict(fields)
  message = str(error.value)
  for part in ('config.log.every_stepz: no such field', "config.batch_size='forty': expected int",
               'config.model.image_size=64.5: expected int'):
    assert part in message, message


def test_bfloat16_compute_trains_with_finite_losses():
  config = train_utils.tiny_config('', batch_size=2)
  config.train.dtype = 'bfloat16'
  cfg = setup.step_config(config, 'base')
  rng = np.random.default_rng(0)
  s = cfg.model.image_size
  img = lambda c: rng.uniform(-1, 1, (2, 1, s, s, c)).astype(np.float32)
  batch = {'source_imgs': img(3), 'source_segs': (img(1) > 0).astype(np.float32), 'source_stickmen': img(3),
           'source_poses': rng.uniform(-1, 1, (2, 1, 136)).astype(np.float32), 'target_imgs': img(3),
           'target_segs': (img(1) > 0).astype(np.float32), 'target_stickmen': img(3),
           'target_poses': rng.uniform(-1, 1, (2, 1, 136)).astype(np.float32)}
  state = step_lib.init_state(cfg, step_lib.init_variables(cfg, 0, step_lib.variable_shapes(cfg, batch)))
  train_step = jax.jit(functools.partial(step_lib.train_step, cfg))
  totals = []
  for _ in range(3):
    state, metrics = train_step(state, batch)
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values()), metrics
    totals.append(float(metrics['loss/total']))
  # Parameters, optimiser state and statistics stay float32.
  assert {x.dtype for x in jax.tree_util.tree_leaves(state['params'])} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree_util.tree_leaves(state['model_state']) if x.dtype.kind == 'f'} == {
      jnp.dtype(jnp.float32)}
  assert totals[-1] != totals[0]
