"""The helpers behind colabs/*.ipynb (bilayer_jax.colab): install planning, runtime sizes, inputs, display of
TensorBoard logs, configs and export checks. The notebooks themselves run in test_colabs.py."""

import pathlib
import stat
import sys
import zipfile

import matplotlib
import numpy as np
import pytest

from bilayer_jax import model_io
from bilayer_jax.colab import display
from bilayer_jax.colab import install
from bilayer_jax.colab import media
from bilayer_jax.colab import runtime
from bilayer_jax.colab import workflows
from bilayer_jax.families.bilayer import setup
from bilayer_jax.inference import video

import train_utils

matplotlib.use('Agg')


# --- install -------------------------------------------------------------------------------------

def test_install_plan_pins_jax_for_the_accelerator_and_keeps_torch_on_cpu():
  requirements = (train_utils.REPO / 'requirements.txt').read_text()
  jax_pin = install.pinned_version(requirements, 'jax')
  assert jax_pin == install.pinned_version(requirements, 'jaxlib')
  cpu = install.plan(train_utils.REPO, 'cpu', python='py')
  assert cpu[0] == ['py', '-m', 'pip', 'uninstall', '-q', '-y', 'tensorflow']  # Colab's; tensorflow-cpu replaces it
  assert cpu[1] == ['py', '-m', 'pip', 'install', '-q', '-r', 'requirements.txt', '--extra-index-url',
                    install.TORCH_CPU_INDEX]
  assert cpu[-1] == ['py', '-m', 'data_prep.fetch_models'] and len(cpu) == 3
  assert install.plan(train_utils.REPO, 'gpu', python='py')[2][-1] == f'jax[cuda12]=={jax_pin}'
  assert install.plan(train_utils.REPO, 'tpu', python='py')[2][-1] == f'jax[tpu]=={jax_pin}'
  with pytest.raises(ValueError, match='accelerator'):
    install.plan(train_utils.REPO, 'npu')
  with pytest.raises(ValueError, match="pins no version of 'jax'"):
    install.pinned_version('numpy==2\njaxlib==1\n', 'jax')


def test_detect_accelerator(tmp_path):
  dev = tmp_path / 'dev'
  dev.mkdir()
  fake_smi = tmp_path / 'nvidia-smi'
  fake_smi.write_text('#!/bin/sh\nexit 0\n')
  fake_smi.chmod(fake_smi.stat().st_mode | stat.S_IEXEC)
  assert install.detect_accelerator({}, nvidia_smi='', dev=str(dev)) == 'cpu'
  assert install.detect_accelerator({}, nvidia_smi=str(fake_smi), dev=str(dev)) == 'gpu'
  assert install.detect_accelerator({'COLAB_TPU_ADDR': '10.0.0.2:8470'}, nvidia_smi='', dev=str(dev)) == 'tpu'
  (dev / 'accel0').touch()
  assert install.detect_accelerator({}, nvidia_smi='', dev=str(dev)) == 'tpu'


def test_install_runs_once_per_runtime_and_restarts_a_kernel_with_stale_modules(tmp_path, capsys):
  (tmp_path / 'requirements.txt').write_text((train_utils.REPO / 'requirements.txt').read_text())
  calls, restarts = [], []
  run = lambda command, cwd: calls.append((command, cwd))
  # Outside Colab nothing is installed unless forced.
  assert not install.install(tmp_path, 'cpu', run=run)
  assert not calls and 'Not on Colab' in capsys.readouterr().out
  assert install.install(tmp_path, 'gpu', force=True, run=run, restart=lambda: restarts.append(1))
  assert [c for c, _ in calls] == install.plan(tmp_path, 'gpu') and {cwd for _, cwd in calls} == {str(tmp_path)}
  assert restarts == [1]  # numpy is imported in this process: the new version needs a fresh kernel
  assert 'restarting the runtime' in capsys.readouterr().out
  calls.clear()
  assert not install.install(tmp_path, 'gpu', force=True, run=run) and not calls  # marker: done already
  assert install.install(tmp_path, 'cpu', force=True, run=run, restart=lambda: None)  # other accelerator
  assert calls


def test_failed_install_command_shows_its_output(capsys):
  with pytest.raises(install.subprocess.CalledProcessError):
    install.run_logged([sys.executable, '-c', 'import sys; print("resolver says no"); sys.exit(3)'], cwd='.')
  assert 'resolver says no' in capsys.readouterr().out
  install.run_logged([sys.executable, '-c', 'print(1)'], cwd='.')


def test_install_failure_leaves_no_marker(tmp_path):
  (tmp_path / 'requirements.txt').write_text('jax==0.10.2\n')

  def fail(command, cwd):
    raise OSError(f'pip failed: {command}')
  with pytest.raises(OSError, match='pip failed'):
    install.install(tmp_path, 'cpu', force=True, run=fail)
  assert not (tmp_path / install.MARKER).exists()


# --- runtime -------------------------------------------------------------------------------------

def test_runtime_sizes():
  assert runtime.sizes_for('tpu', 8, smoke=False).batch_size == 8
  assert runtime.sizes_for('gpu', 3, smoke=False).batch_size == 9
  assert runtime.sizes_for('cpu', 1, smoke=True).base_steps < runtime.sizes_for('cpu', 1, smoke=False).base_steps
  assert runtime.sizes_for('gpu', 1, False).base_steps > runtime.sizes_for('cpu', 1, False).base_steps
  with pytest.raises(ValueError, match='platform'):
    runtime.sizes_for('metal', 1, False)
  assert runtime.smoke_mode({runtime.SMOKE_ENV: '1'}) and not runtime.smoke_mode({runtime.SMOKE_ENV: '0'})
  assert not runtime.smoke_mode({})
  rt = runtime.detect()
  assert rt.platform == 'cpu' and rt.num_devices >= 1 and not rt.in_colab
  assert 'CPU' in rt.describe()


# --- media ---------------------------------------------------------------------------------------

def test_resolve_inputs(tmp_path):
  photo = media.resolve('', 'photo', tmp_path)
  assert video.read_image(photo).shape == (512, 512, 3)
  assert media.resolve('', 'video', tmp_path).endswith('carphone_pristine.mp4')
  uploaded = media.resolve('upload', 'photo', tmp_path / 'up', upload=lambda: {'me.jpg': open(photo, 'rb').read()})
  assert uploaded == str(tmp_path / 'up' / 'me.jpg')
  with pytest.raises(ValueError, match='upload one photo file'):
    media.resolve('upload', 'photo', tmp_path, upload=lambda: {'a.jpg': b'', 'b.jpg': b''})
  with pytest.raises(RuntimeError, match='Colab only'):
    media.resolve('upload', 'photo', tmp_path)
  with pytest.raises(FileNotFoundError, match='photo /nonexistent.jpg: no such file'):
    media.resolve('/nonexistent.jpg', 'photo', tmp_path)
  broken = tmp_path / 'broken.mp4'
  broken.write_bytes(b'not a video')
  with pytest.raises(video.MediaError, match='broken.mp4'):
    media.resolve(str(broken), 'video', tmp_path)
  with pytest.raises(video.MediaError, match='broken.mp4'):
    media.resolve(str(broken), 'photo', tmp_path)
  with pytest.raises(ValueError, match='kind'):
    media.resolve('', 'audio', tmp_path)


def test_frames_for_display_downloads_and_drive_mounting(tmp_path):
  assert media.spread_indices(3, 10) == [0, 4, 9]
  assert media.spread_indices(5, 2) == [0, 1] and media.spread_indices(1, 7) == [0] and media.spread_indices(2, 0) == []
  frames = media.video_frames(media.sample_video(), count=3, max_frames=10)
  assert len(frames) == 3 and frames[0].shape == (144, 176, 3) and frames[0].dtype == np.uint8
  assert not media.mount_drive_if_needed('runs/x', '')
  archive = media.offer_download([media.sample_video()], pathlib.Path(tmp_path) / 'files.zip')
  with zipfile.ZipFile(archive) as zf:
    assert zf.namelist() == ['carphone_pristine.mp4']
  with pytest.raises(FileNotFoundError, match='missing.tflite'):
    media.offer_download([tmp_path / 'missing.tflite'], tmp_path / 'broken.zip')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['files.zip']  # no partial archive
  with pytest.raises(RuntimeError, match='only Colab can mount'):
    media.mount_drive_if_needed('runs/x', '/content/drive/MyDrive/weights')


# --- display -------------------------------------------------------------------------------------

def test_tensorboard_logs_read_back(tmp_path, capsys):
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  image = np.random.RandomState(0).randint(0, 255, (1, 12, 20, 3)).astype(np.uint8)
  writer = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
  writer.write_scalars(1, {'loss/total': 3.0, 'eval/psnr': 10.0})
  writer.write_scalars(2, {'loss/total': 2.0})
  writer.write_images(2, {'train/samples': image})
  writer.close()
  writer = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)  # a resumed run
  writer.write_scalars(2, {'loss/total': 1.5})
  writer.close()
  scalars = display.read_scalars(tmp_path)
  np.testing.assert_array_equal(scalars['loss/total'][0], [1, 2])
  np.testing.assert_allclose(scalars['loss/total'][1], [3.0, 1.5])  # the step logged again keeps its latest value
  step, read = display.read_image(tmp_path, 'train/samples')
  assert step == 2
  np.testing.assert_array_equal(read, image[0])
  with pytest.raises(KeyError, match=r"no image 'eval/samples' logged \(image tags: \['train/samples'\]\)"):
    display.read_image(tmp_path, 'eval/samples')
  display.plot_scalars({'run': tmp_path}, ['loss/total', 'eval/psnr', 'missing/tag'])
  display.show_logged_image(tmp_path, 'train/samples', 'caption')
  display.show_images([image[0], np.zeros((8, 8, 1), np.float32)], ['rgb', 'mask'])
  display.tensorboard(tmp_path, inline=False)
  assert f'tensorboard --logdir {tmp_path}' in capsys.readouterr().out


def test_tables_and_video_player(tmp_path):
  table = display.markdown_table([{'model': 'a', 'psnr': 21.123456, 'frames': 3}, {'model': 'b', 'psnr': float('inf')}])
  assert table.splitlines() == ['| model | psnr | frames |', '|---|---|---|', '| a | 21.12 | 3 |', '| b | inf |  |']
  path = tmp_path / 'clip.mp4'
  video.write_mp4(path, (np.full((16, 16, 3), i * 10, np.uint8) for i in range(5)), fps=5)
  html = display.video_html(path, width=320)
  assert html.startswith('<video width="320" controls') and 'data:video/mp4;base64,AAAA' in html
  display.show_video_frames(path, count=2)


# --- workflows -----------------------------------------------------------------------------------

def test_notebook_configs_follow_the_runtime():
  rt = runtime.Runtime('tpu', 'TPU v4', 4, False, False, runtime.sizes_for('tpu', 4, False))
  base = workflows.demo_config(rt, 'base')
  assert base.num_steps == rt.sizes.base_steps and base.batch_size == 8 and base.log.progress_bar
  assert base.log.checkpoint_every_steps == rt.sizes.base_steps // 2 and base.data.demo
  enhancer = workflows.demo_config(rt, 'enhancer', 'talking_heads/vox2', '/data')
  assert enhancer.num_steps == rt.sizes.enhancer_steps
  assert (enhancer.data.name, enhancer.data.demo, enhancer.data.data_dir) == ('talking_heads/vox2', False, '/data')
  # configs/demo.py:enhancer trains the enhancer and the discriminator only (the base networks stay frozen).
  assert setup.step_config(enhancer, 'enhancer').networks_to_train == ('texture_enhancer', 'discriminator')
  assert not enhancer.standing_stats.enabled


def test_latency_and_bad_export_variants(tmp_path):
  calls = []
  assert workflows.latency_ms(calls.append, np.zeros((1, 136)), runs=3) >= 0 and len(calls) == 4
  with pytest.raises(ValueError, match=r"export variants \['onnx'\]"):
    workflows.export_avatar(None, None, tmp_path, runtime.detect(), variants=('tflite_fp32', 'onnx'))
  with pytest.raises(model_io.ParamsDirError, match='not_a_params_dir'):
    workflows.demo_model(tmp_path, runtime.detect(), params=str(tmp_path / 'not_a_params_dir'))


def test_official_import_is_reused_only_for_the_same_run(fixtures_dir, tmp_path, capsys):
  out = tmp_path / 'official'
  assert workflows.import_official(str(fixtures_dir), '1', out=out) == str(out)
  assert workflows.import_official(str(fixtures_dir), '1', out=out) == str(out)
  assert 'using the weights imported earlier' in capsys.readouterr().out
  with pytest.raises(model_io.ParamsDirError, match='holds weights imported from .* epoch 1, not .* epoch 2'):
    workflows.import_official(str(fixtures_dir), '2', out=out)
  with pytest.raises(model_io.ParamsDirError, match=r'epoch 1, not .* epoch 1 \+ enhancer /enh epoch 1'):
    workflows.import_official(str(fixtures_dir), '1', '/enh', '1', out=out)


def test_an_interrupted_training_cell_stops_run_all(monkeypatch, tmp_path):
  """The trainer turns the notebook's interrupt (SIGINT) into a checkpoint and a normal return; the cell must
  still stop "Run all" so that later cells do not train again or look for params that were never written."""
  from bilayer_jax.train import loop  # pylint: disable=g-import-not-at-top
  summary = {'source': 'initialised from scratch', 'start_step': 0, 'end_step': 3, 'preempted': True}
  monkeypatch.setattr(loop, 'train_and_evaluate', lambda config, workdir: summary)
  config = workflows.demo_config(runtime.detect(), 'base')
  with pytest.raises(KeyboardInterrupt, match='interrupted at step 3: checkpoint saved'):
    workflows.train(config, tmp_path)
  summary['preempted'] = False
  assert workflows.train(config, tmp_path) is summary
