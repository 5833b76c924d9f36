"""Downloading the released bi-layer runs (bilayer_jax.convert.official_weights), importing and animating them.

The server is a folder laid out like the authors' Google Drive folder (`runs/<run>/args.txt`,
`runs/<run>/checkpoints/<epoch>_<net>.pth`) holding the fixtures' original-layout runs, reached through
urllib as a file:// URL or over HTTP from a server on this machine. Nothing comes from the internet, so the
Drive folder itself (through gdown) is not exercised here.
"""

import hashlib
import http.server
import importlib.util
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from bilayer_jax import errors
from bilayer_jax import model_io
from bilayer_jax.colab import runtime
from bilayer_jax.colab import workflows
from bilayer_jax.convert import official_weights
from bilayer_jax.convert import torch_names
from bilayer_jax.data import samples
from bilayer_jax.inference import video
from bilayer_jax.models.config import BASE_NETWORKS

import test_colabs
import train_utils

BASE = f'runs/{official_weights.BASE_RUN}'
ENHANCER = f'runs/{official_weights.ENHANCER_RUN}'


def _layout(root: pathlib.Path, fixtures_dir, enh_run_dir, epoch='2225', enh_epoch='1225') -> pathlib.Path:
  """The fixtures' base and enhancer runs (epoch 1) under the official names and the given epochs."""
  for run, args, nets, source, ep in ((BASE, fixtures_dir / 'args.txt', BASE_NETWORKS, fixtures_dir, epoch),
                                      (ENHANCER, enh_run_dir / 'args.txt', ('texture_enhancer',), enh_run_dir,
                                       enh_epoch)):
    (root / run / 'checkpoints').mkdir(parents=True)
    shutil.copy(args, root / run / 'args.txt')
    for net in nets:
      shutil.copy(source / 'checkpoints' / f'1_{net}.pth', root / run / 'checkpoints' / f'{ep}_{net}.pth')
  return root


@pytest.fixture(name='server')
def _server(tmp_path, fixtures_dir, enh_run_dir) -> pathlib.Path:
  return _layout(tmp_path / 'server', fixtures_dir, enh_run_dir)


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):  # keep the test output to what fails
    del args


def test_download_verify_import_and_animate_with_and_without_enhancer(server, photo_file, tmp_path, capsys):
  dest = tmp_path / 'dest'
  runs = official_weights.download(server.as_uri(), dest, progress=False)
  assert runs == official_weights.Runs(str(dest / BASE), str(dest / ENHANCER))
  manifest = json.loads((dest / official_weights.MANIFEST).read_text())
  assert sorted(manifest) == sorted(official_weights.wanted_files())
  for rel, entry in manifest.items():
    assert (dest / rel).read_bytes() == (server / rel).read_bytes()
    assert entry == {'sha256': _sha256(server / rel), 'source': f'{server.as_uri()}/{rel}'}
  assert not list(dest.rglob('*.tmp'))  # temporary names only while a file is on its way
  assert '7 file(s) downloaded, 0 already here' in capsys.readouterr().out
  assert official_weights.download(server.as_uri(), dest, progress=False) == runs
  assert '0 file(s) downloaded, 7 already here and verified' in capsys.readouterr().out

  params = workflows.import_official(runs.base, '2225', runs.enhancer, '1225', out=tmp_path / 'params')
  assert model_io.load_config(params)[1]['metadata']['imported_from']['enh_epoch'] == '1225'
  rt = runtime.Runtime('cpu', 'cpu', 1, False, True, runtime.sizes_for('cpu', 1, smoke=True))
  results = {}
  for enhance in (True, False):
    out = tmp_path / f'enhance_{enhance}.mp4'
    summary = workflows.animate(params, photo_file, samples.carphone_path(), out, rt, enhance=enhance)
    assert summary['enhanced'] == enhance and summary['frames'] == rt.sizes.driver_frames
    results[enhance] = np.stack(list(video.read_video(out))).astype(np.float32)
  width = results[True].shape[2] // 3  # [source | driver | result]
  assert np.abs(results[True][..., 2 * width:, :] - results[False][..., 2 * width:, :]).mean() > 1.0


def test_other_epochs_and_no_enhancer(tmp_path, fixtures_dir, enh_run_dir):
  server = _layout(tmp_path / 'server', fixtures_dir, enh_run_dir, epoch='7', enh_epoch='3')
  runs = official_weights.download(server.as_uri() + '/', tmp_path / 'dest', '7', '', progress=False)
  assert runs.enhancer == '' and not (tmp_path / 'dest' / ENHANCER).exists()
  assert sorted(p.name for p in (tmp_path / 'dest' / BASE / 'checkpoints').iterdir()) == sorted(
      f'7_{n}.pth' for n in BASE_NETWORKS)


def test_download_over_http_and_a_file_missing_there(server, tmp_path):
  missing = f'{ENHANCER}/checkpoints/1225_texture_enhancer.pth'
  (server / missing).unlink()
  httpd = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), lambda *a: _QuietHandler(*a, directory=str(server)))
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  url = f'http://127.0.0.1:{httpd.server_address[1]}'
  try:
    with pytest.raises(official_weights.DownloadError,
                       match=f'^{missing} is missing on the server: {url}/{missing} answered HTTP 404$'):
      official_weights.download(url, tmp_path / 'dest', progress=False)
    runs = official_weights.download(url, tmp_path / 'dest', enh_epoch='', progress=False)  # the rest came
  finally:
    httpd.shutdown()
    httpd.server_close()
  assert (pathlib.Path(runs.base) / 'checkpoints' / '2225_inference_generator.pth').read_bytes() == (
      server / BASE / 'checkpoints' / '2225_inference_generator.pth').read_bytes()


def test_unreachable_url_is_named(tmp_path):
  url = f'http://127.0.0.1:{_free_port()}/weights'  # nothing listens there: the connection is refused
  with pytest.raises(official_weights.DownloadError, match=f'^cannot reach {url}/{BASE}/args.txt: '):
    official_weights.download(url, tmp_path / 'dest', progress=False)
  assert not list((tmp_path / 'dest').rglob('*.*'))
  with pytest.raises(errors.InvalidArgumentError, match='not a URL'):
    official_weights.download('runs/official', tmp_path / 'dest', progress=False)


def test_a_missing_file_stops_the_download_and_a_rerun_fetches_only_the_rest(server, tmp_path, capsys):
  rel = f'{BASE}/checkpoints/2225_keypoints_embedder.pth'
  (server / rel).rename(tmp_path / 'aside.pth')
  with pytest.raises(official_weights.DownloadError,
                     match=f'^{rel} is missing on the server: no file at {server.as_uri()}/{rel}$'):
    official_weights.download(server.as_uri(), tmp_path / 'dest', progress=False)
  assert not (tmp_path / 'dest' / rel).exists() and not list((tmp_path / 'dest').rglob('*.tmp'))
  (tmp_path / 'aside.pth').rename(server / rel)
  capsys.readouterr()
  official_weights.download(server.as_uri(), tmp_path / 'dest', progress=False)
  assert '4 file(s) downloaded, 3 already here and verified' in capsys.readouterr().out  # args.txt + 2 before it


@pytest.mark.parametrize('rel,content,expected', [
    (f'{BASE}/checkpoints/2225_texture_generator.pth', b'<html>Google Drive - quota exceeded</html>',
     'is not a PyTorch checkpoint'),
    (f'{BASE}/checkpoints/2225_texture_generator.pth', None, r'expected a state dict \(names -> tensors\), found list'),
    (f'{ENHANCER}/args.txt', b'<!DOCTYPE html>\n<html>\n', 'is not an args.txt of the original code'),
], ids=['html_page', 'pickled_list', 'html_args'])
def test_a_file_that_is_not_what_the_importer_reads_is_refused(server, tmp_path, rel, content, expected):
  if content is None:
    torch.save([torch.zeros(2)], server / rel)
  else:
    (server / rel).write_bytes(content)
  with pytest.raises(official_weights.DownloadError, match=f'^{server.as_uri()}/{rel}.*{expected}'):
    official_weights.download(server.as_uri(), tmp_path / 'dest', progress=False)
  assert not (tmp_path / 'dest' / rel).exists() and not list((tmp_path / 'dest').rglob('*.tmp'))
  assert rel not in json.loads((tmp_path / 'dest' / official_weights.MANIFEST).read_text())


def test_a_file_changed_since_its_download_is_refused_on_reuse(server, tmp_path):
  dest = tmp_path / 'dest'
  official_weights.download(server.as_uri(), dest, progress=False)
  changed = dest / BASE / 'checkpoints' / '2225_identity_embedder.pth'
  data = bytearray(changed.read_bytes())
  data[-100] ^= 1
  changed.write_bytes(bytes(data))
  with pytest.raises(official_weights.DownloadError, match=f'^{changed}: its SHA-256 differs from the one recorded'):
    official_weights.download(server.as_uri(), dest, progress=False)


def test_a_checkpoint_of_the_wrong_network_fails_the_import_naming_it(server, tmp_path):
  checkpoints = server / BASE / 'checkpoints'
  shutil.copy(checkpoints / '2225_keypoints_embedder.pth', checkpoints / '2225_identity_embedder.pth')
  runs = official_weights.download(server.as_uri(), tmp_path / 'dest', progress=False)  # a state dict all the same
  with pytest.raises(torch_names.CheckpointMismatchError, match='identity_embedder'):
    workflows.import_official(runs.base, '2225', runs.enhancer, '1225', out=tmp_path / 'params')
  assert not (tmp_path / 'params').exists()


@pytest.mark.skipif(importlib.util.find_spec('gdown') is not None, reason='gdown is installed: it would go online')
def test_the_drive_folder_without_gdown_is_one_line(tmp_path):
  with pytest.raises(official_weights.DownloadError, match='needs gdown'):
    official_weights.download(official_weights.DRIVE_FOLDER_URL, tmp_path / 'dest', progress=False)


def test_import_original_downloads_with_url(server, tmp_path):
  dest, out = tmp_path / 'dest', tmp_path / 'params'
  command = [sys.executable, '-m', 'bilayer_jax.import_original', f'--url={server.as_uri()}',
             f'--download_dir={dest}', f'--out={out}']
  run = subprocess.run(command, cwd=train_utils.REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  imported = model_io.load_config(out)[1]['metadata']['imported_from']
  assert imported == {'run_dir': str(dest / BASE), 'epoch': '2225', 'enh_run_dir': str(dest / ENHANCER),
                      'enh_epoch': '1225'}
  run = subprocess.run(command[:4] + ['--run_dir=/x', f'--out={tmp_path / "o2"}'], cwd=train_utils.REPO,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == errors.EXIT_USER_ERROR and 'error: give either --run_dir or --url' in run.stderr


@pytest.mark.slow
def test_the_demo_notebook_fetches_imports_and_animates_them(server, params_dir, tmp_path, monkeypatch):
  """colabs/demo.ipynb with FETCH_OFFICIAL ticked and OFFICIAL_URL at the served folder (the model of its first
  part given as PARAMS_DIR, so that it trains nothing), at CI sizes."""
  monkeypatch.setenv('BILAYER_JAX_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')  # as in test_colabs: a few frames compile faster
  workdir = tmp_path / 'colab'
  text = test_colabs.execute('demo', tmp_path, WORKDIR=str(workdir), PARAMS_DIR=params_dir, FETCH_OFFICIAL=True,
                             OFFICIAL_URL=server.as_uri())
  assert 'official weights: 7 file(s) downloaded' in text and 'enhancer on' in text and 'enhancer off' in text
  for name in ('demo.mp4', 'official.mp4', 'official_no_enhancer.mp4'):
    assert (workdir / name).stat().st_size > 0, name
  imported = json.loads((workdir / 'official_params' / 'config.json').read_text())['metadata']['imported_from']
  assert imported['run_dir'] == f'{workdir}/official_runs/{BASE}' and imported['enh_epoch'] == '1225'


def test_a_file_put_there_by_hand_is_verified_and_kept(server, tmp_path, capsys):
  dest = tmp_path / 'dest'
  rel = f'{BASE}/checkpoints/2225_texture_generator.pth'
  (dest / rel).parent.mkdir(parents=True)
  shutil.copy(server / rel, dest / rel)
  official_weights.download(server.as_uri(), dest, progress=False)
  assert '6 file(s) downloaded, 1 already here and verified' in capsys.readouterr().out
  assert json.loads((dest / official_weights.MANIFEST).read_text())[rel]['source'] == str(dest / rel)
  hand = dest / ENHANCER / 'args.txt'
  hand.write_bytes(b'\x80 not text')
  (dest / official_weights.MANIFEST).write_text('{}')
  with pytest.raises(official_weights.DownloadError, match=f'^{hand} is not an args.txt'):
    official_weights.download(server.as_uri(), dest, progress=False)
