"""Config validation up front: every bad value fails before anything is built, naming the field."""

import pytest

from bilayer_jax.train import config_checks
from bilayer_jax.train import loop

from configs import demo, paper_base

# (field, bad value, words the message must contain)
BAD_VALUES = [
    ('batch_size', -1, 'expected an integer >= 1'),
    ('batch_size', 0, 'expected an integer >= 1'),
    ('batch_size', 3, 'multiple of the 2 devices'),
    ('num_steps', -5, 'expected an integer >= 0'),
    ('enhancer_num_steps', -1, 'expected an integer >= 0'),
    ('stage', 'bas', 'one of base, enhancer, both'),
    ('networks_to_train', ('identity_embedder', 'discriminatr'), 'names from identity_embedder'),
    ('optim.lrs.discriminator', 0.0, 'a number > 0'),
    ('optim.lrs.texture_generator', -1e-4, 'a number > 0'),
    ('optim.b1', 1.0, 'in [0, 1)'),
    ('optim.eps', 0.0, 'a number > 0'),
    ('data.num_target_frames', 0, 'expected an integer >= 1'),
    ('data.shuffle_buffer', 0, 'expected an integer >= 1'),
    ('loss.adv_pred_type', 'hinge', 'one of ragan, rgan, gan'),
    ('loss.pix_loss_type', 'l3', 'one of l1, mse'),
    ('loss.fem_loss_weight', -1.0, 'a number >= 0'),
    ('loss.per_layer_weights', (1.0, 2.0), 'five weights'),
    ('loss.perceptual_weights_dir', '/nonexistent/weights', 'does not exist'),
    ('train.dtype', 'float16', 'one of float32, bfloat16'),
    ('train.matmul_precision', 'fastest', 'one of default'),
    ('standing_stats.num_batches', 0, 'expected an integer >= 1'),
    ('log.every_steps', -1, 'expected an integer >= 0 (0 = never)'),
    ('log.checkpoint_every_steps', -2, 'expected an integer >= 0 (0 = never)'),
    ('log.keep_checkpoints', 0, 'expected an integer >= 1'),
    ('log.eval_batches', 0, 'expected an integer >= 1'),
    ('eval.metrics', ('psnr', 'ssmi'), 'names from l1'),
    ('eval.mask', 'gt', 'one of ground_truth, predicted, none'),
    ('eval.enhance', 'yes', 'one of auto, true, false'),
    ('init_from', '/nonexistent/params', 'the params directory does not exist'),
    ('resume', '/nonexistent/run', 'the workdir to resume does not exist'),
    ('model.image_size', 96, 'image_size / emb_output_tensor_size = 96/8 must be a power of two'),
    ('model.tex_max_channels', 24, 'config.model:'),
]


def _set(config, field, value):
  *parents, leaf = field.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def test_the_shipped_configs_pass():
  for config, devices in ((demo.get_config(), 4), (demo.get_config('enhancer'), 2), (paper_base.get_config(), 8)):
    config_checks.check(config, num_devices=devices)


@pytest.mark.parametrize('field,value,expected', BAD_VALUES, ids=[f'{f}={v}' for f, v, _ in BAD_VALUES])
def test_a_bad_value_names_the_field_value_and_what_is_expected(field, value, expected):
  config = demo.get_config()
  _set(config, field, value)
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.check(config, num_devices=2)
  message = str(error.value)
  assert f'config.{field.split(".")[0] if field.startswith("model.") else field}' in message, message
  assert expected in message, message
  assert '\n' not in message


def test_zero_periods_mean_never_and_all_problems_are_listed():
  config = demo.get_config()
  for field in ('every_steps', 'image_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    config.log[field] = 0
  config_checks.check(config, num_devices=1)
  config.batch_size, config.num_steps = -1, -1
  with pytest.raises(config_checks.ConfigError, match=r'batch_size=-1.*; config\.num_steps=-1'):
    config_checks.check(config, num_devices=1)


def test_the_trainer_checks_before_writing_anything(tmp_path):
  config = demo.get_config()
  config.batch_size = -1
  workdir = tmp_path / 'run'
  with pytest.raises(config_checks.ConfigError, match='batch_size'):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
