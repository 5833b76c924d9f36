"""The model-family seam: the registry, the config's family field, params directories that name their family."""

import json

import pytest

from bilayer_jax import config as config_lib
from bilayer_jax import families
from bilayer_jax import model_io
from bilayer_jax.families import base
from bilayer_jax.train import config_checks

from configs import demo


def test_the_registry_and_the_config_agree_on_every_family():
  assert set(families.FAMILIES) == set(config_lib.MODEL_CONFIGS) == set(config_lib.FAMILY_SECTIONS) == set(
      config_checks.FAMILY_CHECKS)
  assert 'original' in families.get('bilayer').converters
  for name, family in families.FAMILIES.items():
    assert family.name == name and family.model_config is config_lib.MODEL_CONFIGS[name]
    assert isinstance(family.training, base.Training)
    for stage in family.stages:
      assert stage.objective and set(stage.networks) <= set(family.networks), (name, stage.name)


def test_the_bilayer_stages_are_the_configs_defaults():
  family = families.get('bilayer')
  base_config = config_lib.from_config_dict(demo.get_config('base'))
  assert family.stage('base').networks == base_config.networks_to_train
  enhancer_config = config_lib.from_config_dict(demo.get_config('enhancer'))
  assert family.stage('enhancer').networks == enhancer_config.networks_to_train


def test_an_unknown_family_is_a_config_error_naming_the_known_ones():
  with pytest.raises(config_lib.ConfigError, match="config.family='flame': expected one of bilayer, fsth, lpd"):
    families.get('flame')
  config = demo.get_config()
  config.family = 'flame'
  with pytest.raises(config_lib.ConfigError, match="config.family='flame': expected one of bilayer, fsth, lpd"):
    config_checks.check(config, num_devices=1)


def test_a_config_of_one_family_with_another_familys_fields_names_them():
  config = demo.get_config()
  config.family = 'fsth'
  with pytest.raises(config_lib.ConfigError) as error:
    config_checks.check(config, num_devices=1)
  message = str(error.value)
  assert 'config.model: no such fields bn_momentum, dis_activation_type, dis_downsampling_type and ' in message
  assert '(config.model is a FSTHConfig; start from a config file of this family)' in message
  assert 'config.loss: no such fields adv_loss_weight' in message and len(message) < 1000


def test_a_params_directory_names_its_family(small_run, tmp_path):
  cfg, variables, meta = small_run
  path = model_io.save_params(tmp_path / 'params', cfg, variables, meta)
  info = json.loads((path / 'config.json').read_text())
  assert (info['format'], info['family'], info['model_config']['image_size']) == (
      model_io.FORMAT, 'bilayer', cfg.image_size)
  loaded, info = model_io.load_config(path)
  assert loaded == cfg and info['family'] == 'bilayer'


def test_a_params_directory_of_the_first_format_loads_as_bilayer(small_run, tmp_path):
  cfg, variables, meta = small_run
  path = model_io.save_params(tmp_path / 'params', cfg, variables, meta)
  info = json.loads((path / 'config.json').read_text())
  first = {'format': 'bilayer_jax.params/1', 'bilayer_config': info['model_config'],
           'networks': info['networks'], 'metadata': info['metadata']}
  (path / 'config.json').write_text(json.dumps(first))
  loaded, info = model_io.load_config(path)
  assert loaded == cfg and info['family'] == 'bilayer'
  animator = families.animator_from_params(str(path))
  assert animator.cfg == cfg


def test_a_params_directory_with_a_bad_architecture_names_the_field(small_run, tmp_path):
  cfg, variables, meta = small_run
  path = model_io.save_params(tmp_path / 'params', cfg, variables, meta)
  info = json.loads((path / 'config.json').read_text())
  info['model_config']['image_sise'] = 64
  (path / 'config.json').write_text(json.dumps(info))
  with pytest.raises(model_io.ParamsDirError, match='model.image_sise: no such field'):
    model_io.load_config(path)
