"""Original checkpoint I/O: bit-exact round trip, key order, clear errors, full-size layout, the CLIs."""

import collections
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from bilayer_jax import export as export_cli
from bilayer_jax import model_io
from bilayer_jax.convert import original
from bilayer_jax.convert import torch_names
from bilayer_jax.models.config import NETWORK_NAMES

KEYS_FILE = pathlib.Path(__file__).parent / 'fixtures' / 'bilayer_state_dict_keys.txt'


def _load(path):
  return torch.load(path, map_location='cpu', weights_only=True)


def test_import_export_is_bit_exact_with_original_key_order(small_run, fixtures_dir, tmp_path):
  cfg, variables, meta = small_run
  params_dir = model_io.save_params(tmp_path / 'params', cfg, variables, meta)
  export_cli.export_original(str(params_dir), str(tmp_path / 'base'), '7', str(tmp_path / 'enh'), '9')
  for net in NETWORK_NAMES:
    run = tmp_path / ('enh' if net == 'texture_enhancer' else 'base')
    epoch = '9' if net == 'texture_enhancer' else '7'
    ours, ref = _load(run / 'checkpoints' / f'{epoch}_{net}.pth'), _load(fixtures_dir / 'checkpoints' / f'1_{net}.pth')
    assert list(ours) == list(ref), f'{net}: key order differs'
    for key in ref:
      assert ours[key].dtype == ref[key].dtype, (net, key)
      assert torch.equal(ours[key], ref[key]), f'{net}.{key} not bit-exact'
  # The imported args come back as they were (as the original's parse_args_line reads them).
  assert original.read_args(tmp_path / 'base' / 'args.txt') == original.read_args(fixtures_dir / 'args.txt')
  assert original.read_args(tmp_path / 'enh' / 'args.txt') == original.read_args(fixtures_dir / 'args_enh.txt')


def test_params_directory_round_trip(small_run, tmp_path):
  cfg, variables, meta = small_run
  model_io.save_params(tmp_path / 'p', cfg, variables, meta)
  cfg2, variables2, info = model_io.load_params(tmp_path / 'p')
  assert cfg2 == cfg and info['networks'] == list(NETWORK_NAMES)
  flat, flat2 = torch_names.flatten(variables), torch_names.flatten(variables2)
  assert flat.keys() == flat2.keys()
  for key in flat:
    np.testing.assert_array_equal(np.asarray(flat[key]), np.asarray(flat2[key]))
  with pytest.raises(model_io.ParamsDirError, match='already exists'):
    model_io.save_params(tmp_path / 'p', cfg, variables)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')], 'temporary directory left behind'


def test_replacing_a_params_directory_never_loses_the_complete_one(small_run, tmp_path):
  cfg, variables, _ = small_run
  target = tmp_path / 'params'
  model_io.replace_params(target, cfg, variables, {'step': 1})
  model_io.replace_params(target, cfg, variables, {'step': 2})
  assert model_io.load_config(target)[1]['metadata']['step'] == 2
  assert sorted(p.name for p in tmp_path.iterdir()) == ['params']
  # Interrupted between moving DIR aside and moving the new one in: only DIR.old is complete.
  target.rename(tmp_path / 'params.old')
  (tmp_path / 'params.new').mkdir()
  with pytest.raises(ValueError, match='Unsupported type'):  # and now the new variables fail to save
    model_io.replace_params(target, cfg, {'x': object()})
  assert model_io.load_config(target)[1]['metadata']['step'] == 2  # the complete copy is back in place


def _copy_run(fixtures_dir, dst):
  shutil.copytree(fixtures_dir / 'checkpoints', dst / 'checkpoints')
  shutil.copy(fixtures_dir / 'args.txt', dst / 'args.txt')
  return dst


def test_wrong_shape_names_network_key_and_shapes(fixtures_dir, tmp_path):
  run = _copy_run(fixtures_dir, tmp_path / 'run')
  path = run / 'checkpoints' / '1_inference_generator.pth'
  sd = _load(path)
  sd['gen_inf.heads.1.0.weight_orig'] = torch.zeros(3, 5, 3, 3)
  del sd['gen_inf.heads.0.0.bias']
  sd['gen_inf.extra.weight'] = torch.zeros(2)
  torch.save(sd, path)
  with pytest.raises(torch_names.CheckpointMismatchError) as err:
    original.import_run(run, 1)
  message = str(err.value)
  assert 'inference_generator' in message and '1_inference_generator.pth' in message
  assert "'gen_inf.heads.1.0.weight_orig': expected shape (3, 4, 3, 3), found (3, 5, 3, 3)" in message
  assert "missing key 'gen_inf.heads.0.0.bias'" in message
  assert "unexpected key 'gen_inf.extra.weight'" in message


def test_checkpoint_of_another_config_is_rejected(fixtures_dir, tmp_path):
  run = _copy_run(fixtures_dir, tmp_path / 'run')
  args = (run / 'args.txt').read_text().replace('pse_num_channels: 32', 'pse_num_channels: 64')
  (run / 'args.txt').write_text(args)
  with pytest.raises(torch_names.CheckpointMismatchError,
                     match=r"(?s)keypoints_embedder .*expected shape \(64, 1088\)"):
    original.import_run(run, 1)


def test_missing_and_corrupt_files_give_clear_errors(fixtures_dir, tmp_path):
  run = _copy_run(fixtures_dir, tmp_path / 'run')
  with pytest.raises(original.RunDirError, match='2_identity_embedder.pth'):
    original.import_run(run, 2)
  (run / 'checkpoints' / '1_keypoints_embedder.pth').write_bytes(b'not a checkpoint')
  with pytest.raises(original.RunDirError, match='1_keypoints_embedder.pth: not a readable PyTorch checkpoint'):
    original.import_run(run, 1)
  with pytest.raises(original.RunDirError, match='run directory not found'):
    original.import_run(tmp_path / 'nowhere', 1)


def _random_state_dict(entries, rng):
  sd = collections.OrderedDict()
  for key, shape, dtype in entries:
    leaf = key.rsplit('.', 1)[-1]
    if leaf == 'num_batches_tracked':
      value = np.array(3, np.int64)
    elif leaf == 'identity_grid':
      value = original.torch_names.constant_buffers('inference_generator', original.BilayerConfig())[leaf]
    elif leaf == 'frequencies':
      value = original.torch_names.constant_buffers('keypoints_embedder', original.BilayerConfig())[leaf]
    elif leaf in ('running_var',):
      value = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      value = rng.standard_normal(shape, np.float32)
      if leaf in ('weight_u', 'weight_v'):
        value /= np.linalg.norm(value)
    assert value.shape == shape and str(value.dtype) == dtype, key
    sd[key] = torch.from_numpy(np.array(value))
  return sd


def test_full_size_random_official_run_imports(tmp_path):
  """A random run directory with every key and shape of the paper-size original (keys file)."""
  entries = collections.defaultdict(list)
  for line in KEYS_FILE.read_text().splitlines():
    if not line or line.startswith('#'):
      continue
    key, shape, dtype, _ = line.split('\t')
    net, key = key.split('.', 1)
    entries[net].append((key, tuple(int(s) for s in re.findall(r'\d+', shape)), dtype))
  rng = np.random.default_rng(0)
  base, enh = tmp_path / 'main', tmp_path / 'enhancer'
  for net, rows in entries.items():
    run = enh if net == 'texture_enhancer' else base
    (run / 'checkpoints').mkdir(parents=True, exist_ok=True)
    torch.save(_random_state_dict(rows, rng), run / 'checkpoints' / f'2225_{net}.pth')
  (base / 'args.txt').write_text(original.format_args(original.paper_args('base')))
  (enh / 'args.txt').write_text(original.format_args(original.paper_args('enhancer')))
  cfg, variables, _ = original.import_run(base, 2225, enh, 2225)
  assert cfg == original.BilayerConfig()  # the paper config, harmonics on
  assert model_io.networks_in(variables) == list(NETWORK_NAMES)
  kernel = variables['generator']['params']['texture_generator']['gen_tex']['blocks_3']['block_feats_3']['kernel']
  ref = _load(base / 'checkpoints' / '2225_texture_generator.pth')['gen_tex.blocks.3.block_feats.3.weight_orig']
  np.testing.assert_array_equal(kernel, ref.numpy().transpose(2, 3, 1, 0))


def test_harmonics_setting_is_read_from_the_checkpoint(fixtures_dir, tmp_path):
  run = _copy_run(fixtures_dir, tmp_path / 'run')
  (run / 'args.txt').write_text((run / 'args.txt').read_text().replace('pse_use_harmonic_enc: True',
                                                                        'pse_use_harmonic_enc: False'))
  cfg, _, _ = original.import_run(run, 1)
  assert cfg.pse_use_harmonic_enc  # net.mlp.0 is (32, 1088) and `frequencies` exists


def test_import_cli_writes_a_loadable_params_dir(fixtures_dir, enh_run_dir, tmp_path):
  out = tmp_path / 'official'
  result = subprocess.run([sys.executable, '-m', 'bilayer_jax.import_original', f'--run_dir={fixtures_dir}',
                           '--epoch=1', f'--enh_run_dir={enh_run_dir}', '--enh_epoch=1', f'--out={out}'],
                          capture_output=True, text=True, check=True)
  assert 'texture_enhancer' in result.stdout
  cfg, variables, info = model_io.load_params(out)
  assert info['metadata']['imported_from']['epoch'] == '1'
  assert cfg.image_size == 64 and 'discriminator' in variables
