"""The official LPD checkpoint files (model_<iteration>.pth) <-> params directories: import through the CLI
functions, every array equal to the file's; export and import back; a fine-tuned file; one-line errors.

The files are built in the official layout (`utils.save_model`: pickle protocol -1, train.py's Namespace with
pathlib paths, optimiser states) from the parity fixtures' state dicts (tests/fixtures/lpd_small, the small
configuration `lpd_utils.CFG`)."""

import argparse
import datetime
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from bilayer_jax import export as export_cli
from bilayer_jax import import_original
from bilayer_jax import model_io
from bilayer_jax.convert import lpd_checkpoint
from bilayer_jax.convert import lpd_reference
from bilayer_jax.convert import torch_names

import lpd_utils
import train_utils

GENERATOR_SIDE = ('embedder', 'generator')
SMALL_ARGS = dict(image_size=64, embed_channels=32, pose_embedding_size=16, num_channels=4, max_num_channels=32,
                  gen_constant_input_size=4, gen_num_residual_blocks=2, dis_num_blocks=7, in_channels=3,
                  out_channels=3, gen_padding='zero', dis_padding='zero', norm_layer='in', average_function='sum',
                  embedder=lpd_checkpoint.MODULES['embedder'], generator=lpd_checkpoint.MODULES['generator'],
                  discriminator=lpd_checkpoint.MODULES['discriminator'], num_labels=5, device='cuda',
                  data_root=pathlib.Path('/datasets/VoxCeleb2'), experiment_dir=pathlib.Path('experiments/x'))


def _states():
  weights = lpd_utils.load('weights.npz')
  return {net: lpd_utils.state_dict(weights, net) for net in lpd_reference.NETWORKS}


def _shifted(state, amount):
  """Another set of weights (an EMA that differs from the raw networks): float entries shifted."""
  return {k: v + amount if v.dtype == np.float32 else v for k, v in state.items()}


def _tensors(state):
  return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def _save(path, states, averages, **args):
  """A checkpoint as the official save_model writes it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  checkpoint = {**{net: _tensors(s) for net, s in states.items()},
                'optimizer_G': {'state': {}, 'param_groups': [{'lr': 5e-5, 'betas': (0.0, 0.999), 'params': [0]}]},
                'optimizer_D': {'state': {}, 'param_groups': [{'lr': 2e-4, 'betas': (0.0, 0.999), 'params': [0]}]},
                'args': argparse.Namespace(**{**SMALL_ARGS, 'finetune': False, 'iteration': 1234, **args})}
  if averages is not None:
    checkpoint['running_averages'] = {net: _tensors(s) for net, s in averages.items()}
  torch.save(checkpoint, path, pickle_protocol=-1)
  return path


def _without_table(state):
  return {k: v for k, v in state.items() if not k.startswith(lpd_reference.TABLE_PREFIX)}


def _assert_states_equal(found, expected, what):
  found = {k: np.asarray(v.numpy() if torch.is_tensor(v) else v) for k, v in found.items()}
  assert set(found) == set(expected), f'{what}: {sorted(set(found) ^ set(expected))}'
  for key, value in expected.items():
    np.testing.assert_array_equal(found[key], value, err_msg=f'{what} {key}')


def _params_states(variables):
  """A params directory's variables back as official state dicts (the discriminator without its table)."""
  side = variables['generator']
  out = {net: lpd_reference.state_dict_from_variables(net, lpd_utils.CFG,
                                                      {c: t[net] for c, t in side.items() if net in t})
         for net in GENERATOR_SIDE}
  out['discriminator'] = lpd_reference.state_dict_from_variables('discriminator', lpd_utils.CFG,
                                                                 variables['discriminator'])
  return out


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """An official run directory: an older checkpoint and the newest, whose EMA differs from its networks."""
  folder = tmp_path_factory.mktemp('lpd_run')
  states = _states()
  ema = {net: _shifted(states[net], 0.5) for net in GENERATOR_SIDE}
  _save(folder / 'checkpoints' / 'model_00000010.pth', {n: _shifted(s, 9.0) for n, s in states.items()}, None)
  _save(folder / 'checkpoints' / 'model_00001234.pth', states, ema)
  return folder, states, ema


def test_import_and_export_round_trip(run_dir, tmp_path):
  folder, states, ema = run_dir
  params = import_original.import_run(str(folder), None, out=str(tmp_path / 'params'), family='lpd')
  cfg, variables, info = model_io.load_params(params)
  assert info['family'] == 'lpd' and cfg == lpd_utils.CFG  # torchvision widths read from the shapes
  metadata = info['metadata']
  assert metadata['iteration'] == 1234 and not metadata['finetuned'] and metadata['checkpoint'].endswith('1234.pth')
  assert metadata['crop_style'] == 'latentpose'  # the official data's crop: drivers are cropped by face boxes
  imported = _params_states(variables)
  for net in GENERATOR_SIDE:  # the EMA, as drive.py renders with
    _assert_states_equal(imported[net], ema[net], net)
  _assert_states_equal(imported['discriminator'], _without_table(states['discriminator']), 'discriminator')

  export_cli.export_original(str(params), str(tmp_path / 'out'), '7')
  path = tmp_path / 'out' / 'checkpoints' / 'model_00000007.pth'
  written = lpd_checkpoint.read_checkpoint(path)
  assert 'optimizer_G' not in written and 'optimizer_D' not in written
  for net in GENERATOR_SIDE:
    _assert_states_equal(written[net], ema[net], net)
    _assert_states_equal(written['running_averages'][net], ema[net], f'running_averages {net}')
  _assert_states_equal(_without_table(written['discriminator']), _without_table(states['discriminator']), 'D')
  table = written['discriminator']['embed.weight_orig'].numpy()
  assert table.shape == (1, cfg.identity_dim) and np.abs(table).max() <= lpd_checkpoint.TABLE_BOUND
  args = written['args']
  assert isinstance(args, argparse.Namespace) and isinstance(args.data_root, pathlib.Path)
  rebuilt = (*lpd_checkpoint.ARCHITECTURE_ARGS, *lpd_checkpoint.FIXED_ARGS, *lpd_checkpoint.MODULES)
  assert {k: getattr(args, k) for k in rebuilt} == {k: SMALL_ARGS[k] for k in rebuilt}
  assert args.num_labels == 1 and args.iteration == 7 and not args.finetune and args.runner == 'holycow'

  cfg2, variables2, metadata2 = lpd_checkpoint.import_run(tmp_path / 'out')
  assert cfg2 == cfg and metadata2['iteration'] == 7
  before, after = torch_names.flatten(variables), torch_names.flatten(variables2)
  assert set(before) == set(after)
  for key, value in before.items():
    np.testing.assert_array_equal(after[key], value, err_msg=str(key))


def test_a_finetuned_checkpoint_keeps_its_identity_embedding(tmp_path):
  states = _states()
  rng = np.random.default_rng(0)
  identity = rng.normal(size=(1, 32)).astype(np.float32)
  tuned = {'embedder': states['embedder'], 'generator': {**states['generator'], 'identity_embedding': identity},
           'discriminator': {**_without_table(states['discriminator']),
                             'embed.weight_orig': identity, 'embed.weight_u': np.ones(1, np.float32),
                             'embed.weight_v': identity[0] / np.linalg.norm(identity)}}
  ema = {'embedder': _shifted(states['embedder'], 0.5), 'generator': _shifted(tuned['generator'], 0.25)}
  path = _save(tmp_path / 'model_00000140.pth', tuned, ema, finetune=True, num_labels=1, iteration=140)
  cfg, variables, metadata = lpd_checkpoint.import_run(path)
  assert metadata['finetuned'] and metadata['iteration'] == 140
  np.testing.assert_array_equal(variables['generator']['params']['generator']['identity_embedding'],
                                ema['generator']['identity_embedding'])
  model_io.save_params(tmp_path / 'params', cfg, variables, metadata)
  export_cli.export_original(str(tmp_path / 'params'), str(tmp_path / 'out'), '140')
  written = lpd_checkpoint.read_checkpoint(tmp_path / 'out' / 'checkpoints' / 'model_00000140.pth')
  assert written['args'].finetune and written['args'].optimizer == 'RAdam' and written['args'].num_labels == 1
  _assert_states_equal(written['generator'], ema['generator'], 'generator')
  _assert_states_equal(written['running_averages']['embedder'], ema['embedder'], 'running_averages embedder')


def test_without_running_averages_the_raw_networks_are_imported(tmp_path):
  states = _states()
  path = _save(tmp_path / 'model_00000003.pth', states, {})  # save_model with --no-weights_running_average
  _, variables, metadata = lpd_checkpoint.import_run(path)
  assert metadata['weights'] == {'embedder': 'raw', 'generator': 'raw'}
  _assert_states_equal(_params_states(variables)['generator'], states['generator'], 'generator')


def _one_line_error(error_type, match, call, *args, **kwargs):
  with pytest.raises(error_type, match=match) as info:
    call(*args, **kwargs)
  assert '\n' not in str(info.value), str(info.value)


def test_bad_files_are_one_line_errors(tmp_path):
  states = _states()
  error = lpd_checkpoint.CheckpointFileError
  (tmp_path / 'broken.pth').write_bytes(b'not a checkpoint')
  _one_line_error(error, r'broken.pth: not a readable PyTorch checkpoint', lpd_checkpoint.import_run,
                  tmp_path / 'broken.pth')
  torch.save(_tensors(states['generator']), tmp_path / 'state_dict.pth')
  _one_line_error(error, r"state_dict.pth: not an official LPD checkpoint: no 'embedder', 'generator', "
                  r"'discriminator', 'args'", lpd_checkpoint.import_run, tmp_path / 'state_dict.pth')
  (tmp_path / 'empty').mkdir()
  _one_line_error(error, r'empty: no checkpoints/model_<iteration>.pth', lpd_checkpoint.import_run, tmp_path / 'empty')
  other = _save(tmp_path / 'other.pth', states, None, generator='FSTH')
  _one_line_error(error, r"other.pth: args name generator 'FSTH'; the lpd family is the default modules",
                  lpd_checkpoint.import_run, other)
  padding = _save(tmp_path / 'padding.pth', states, None, gen_padding='reflection')
  _one_line_error(error, r"args gen_padding='reflection' \(expected 'zero'\)", lpd_checkpoint.import_run, padding)
  dated = _save(tmp_path / 'dated.pth', states, None, started=datetime.datetime(2020, 1, 1))
  _one_line_error(error, r'dated.pth: pickles a datetime.datetime, which is not loaded', lpd_checkpoint.import_run,
                  dated)
  no_key = {**states, 'generator': {k: v for k, v in states['generator'].items() if k != 'constant.constant'}}
  with pytest.raises(torch_names.CheckpointMismatchError, match=r"missing key 'constant.constant'"):
    lpd_checkpoint.import_run(_save(tmp_path / 'no_key.pth', no_key, None))

  bad = {**states, 'generator': {**states['generator'], 'constant.constant': np.zeros((1, 3, 4, 4), np.float32)}}
  proc = subprocess.run([sys.executable, '-m', 'bilayer_jax.import_original', '--family', 'lpd', '--run_dir',
                         str(_save(tmp_path / 'bad.pth', bad, None)), '--out', str(tmp_path / 'o')],
                        capture_output=True, text=True, timeout=300, cwd=train_utils.REPO)
  assert proc.returncode == 2 and "key 'constant.constant': expected shape (1, 32, 4, 4), found (1, 3, 4, 4)" in (
      proc.stderr.strip().splitlines()[-1]), proc.stderr[-2000:]
  assert 'error: generator (' in proc.stderr and 'Traceback' not in proc.stderr and not (tmp_path / 'o').exists()
