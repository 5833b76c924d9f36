"""The FSTH reference's checkpoint files (model_weights.tar, finetuned_model.tar) <-> params directories:
import through the CLI, export back, every state dict equal; errors name the file and what is missing."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from bilayer_jax import export as export_cli
from bilayer_jax import families
from bilayer_jax import import_original
from bilayer_jax import model_io
from bilayer_jax.convert import fsth_checkpoint

import train_utils

WEIGHTS = pathlib.Path(__file__).parent / 'fixtures' / 'fsth_small' / 'weights.npz'  # the reference at 1/8 width
FILE_KEYS = {'embedder': 'E_state_dict', 'generator': 'G_state_dict', 'discriminator': 'D_state_dict'}


def _state_dicts():
  with np.load(WEIGHTS) as weights:
    return {net: {k.split('/', 1)[1]: np.array(v) for k, v in weights.items() if k.startswith(net + '/')}
            for net in FILE_KEYS}


def _write(path, networks, state_dicts, **extra):
  torch.save({**{FILE_KEYS[n]: {k: torch.from_numpy(v) for k, v in state_dicts[n].items()} for n in networks},
              **extra}, path)
  return path


@pytest.fixture(scope='module')
def reference_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp('reference')
  states = _state_dicts()
  tuned = {net: {k: v + (0.5 if k in ('psi', 'w_prime') else 0) for k, v in states[net].items()}
           for net in ('generator', 'discriminator')}
  meta = _write(folder / 'model_weights.tar', FILE_KEYS, states, epoch=3, lossesG=[1.0], num_vid=2)
  finetuned = _write(folder / 'finetuned_model.tar', ('generator', 'discriminator'), tuned, epoch=1)
  return states, tuned, meta, finetuned


def test_import_and_export_round_trip(reference_files, tmp_path):
  states, _, meta, _ = reference_files
  params = import_original.import_run(str(meta), None, out=str(tmp_path / 'params'), family='fsth')
  cfg, variables, info = model_io.load_params(params)
  assert info['family'] == 'fsth' and cfg.width == 8 and not info['metadata']['finetuned']
  assert isinstance(families.animator_from_params(str(params)), families.get('fsth').animator)
  export_cli.export_original(str(params), str(tmp_path / 'out'), '7')
  written = torch.load(tmp_path / 'out' / 'model_weights.tar', weights_only=True)
  assert written['epoch'] == 7 and not (tmp_path / 'out' / 'finetuned_model.tar').exists()
  for net, key in FILE_KEYS.items():
    expected = {k: v for k, v in states[net].items() if k != 'W_i'}
    found = {k: v.numpy() for k, v in written[key].items() if k != 'W_i'}
    assert set(found) == set(expected), net
    for k, v in expected.items():
      np.testing.assert_allclose(found[k], v, rtol=0, atol=0, err_msg=f'{net} {k}')
  assert tuple(written['D_state_dict']['W_i'].shape) == (cfg.embedding_dim, fsth_checkpoint.REFERENCE_SLOTS)


def test_a_finetuned_checkpoint_imports_with_the_meta_embedder(reference_files, tmp_path):
  states, tuned, meta, finetuned = reference_files
  cfg, variables, metadata = fsth_checkpoint.import_run(meta, None, finetuned)
  assert metadata['finetuned']
  np.testing.assert_allclose(variables['generator']['params']['generator']['psi'], tuned['generator']['psi'][:, 0])
  np.testing.assert_allclose(variables['discriminator']['params']['w_prime'], tuned['discriminator']['w_prime'][:, 0])
  model_io.save_params(tmp_path / 'p', cfg, variables, metadata)
  assert families.animator_from_params(str(tmp_path / 'p')).finetuned
  export_cli.export_original(str(tmp_path / 'p'), str(tmp_path / 'out'), '1')
  written = torch.load(tmp_path / 'out' / 'finetuned_model.tar', weights_only=True)
  np.testing.assert_allclose(written['G_state_dict']['psi'].numpy(), tuned['generator']['psi'])
  del states


def test_bad_files_are_one_line_errors(reference_files, tmp_path):
  states = reference_files[0]
  no_embedder = _write(tmp_path / 'partial.tar', ('generator', 'discriminator'), states)
  with pytest.raises(fsth_checkpoint.CheckpointFileError, match=r'partial.tar: no E_state_dict'):
    fsth_checkpoint.import_run(no_embedder)
  (tmp_path / 'broken.tar').write_bytes(b'not a checkpoint')
  with pytest.raises(fsth_checkpoint.CheckpointFileError, match=r'broken.tar: not a readable PyTorch checkpoint'):
    fsth_checkpoint.import_run(tmp_path / 'broken.tar')
  bad = {**states, 'generator': {**states['generator'], 'p': np.zeros((3, 3), np.float32)}}
  proc = subprocess.run([sys.executable, '-m', 'bilayer_jax.import_original', '--family', 'fsth', '--run_dir',
                         str(_write(tmp_path / 'bad.tar', FILE_KEYS, bad)), '--out', str(tmp_path / 'o')],
                        capture_output=True, text=True, timeout=300, cwd=train_utils.REPO)
  assert proc.returncode == 2 and "key 'p': expected shape" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith('error: ') and not (tmp_path / 'o').exists()


def test_with_init_or_onnx_export_of_an_fsth_model_is_a_clear_usage_error(reference_files, tmp_path, photo_file):
  params = import_original.import_run(str(reference_files[2]), None, out=str(tmp_path / 'params'), family='fsth')
  with pytest.raises(export_cli.UsageError, match=r'--with_init: the fsth family'):
    export_cli.export(str(params), 'tflite', str(tmp_path / 'x.tflite'), source=photo_file, with_init=True)
  with pytest.raises(export_cli.UsageError, match=r'--format onnx exports the bi-layer .*; fsth params export'):
    export_cli.export(str(params), 'onnx', str(tmp_path / 'x.onnx'), source=photo_file)
  assert not (tmp_path / 'x.onnx').exists()
