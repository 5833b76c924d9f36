"""LPD fine-tuning (`bilayer_jax.finetune` on lpd params): the generator's identity vector starts at the
person's mean identity and trains, resumable after preemption to the uninterrupted losses, params the
animator renders with the fine-tuned identity, the augmented batches, and one-line errors."""

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest

from bilayer_jax import config as config_lib
from bilayer_jax import errors
from bilayer_jax import evaluate
from bilayer_jax import families
from bilayer_jax import finetune
from bilayer_jax import model_io
from bilayer_jax.evaluators import protocol
from bilayer_jax.families.lpd import finetuning
from bilayer_jax.inference import preprocess

import train_utils


@pytest.fixture(scope='module')
def person(demo_data_dir):
  """Three frames of the held-out video as preprocessed sources (with their segmentations), and targets."""
  video = protocol.list_videos(demo_data_dir, 'unseen', 'talking_heads/demo')[0]  # a person never trained on
  loader = protocol.FrameLoader(demo_data_dir, 'talking_heads/demo', train_utils.TINY_LPD.image_size)
  frames = loader(video, protocol.select_frames(video.num_frames, 0, 3, num_sources=3), num_sources=3)
  return protocol.all_source_inputs(frames), frames


def _settings(**kwargs):
  return finetune.Settings(**{'steps': 4, 'checkpoint_every': 2, 'progress': False, **kwargs})


@pytest.fixture(scope='module')
def meta_params(tiny_lpd_run):
  return str(tiny_lpd_run[0] / 'params')


@pytest.fixture(scope='module')
def tuned(meta_params, person, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('lpd_ft')
  return workdir, finetune.finetune(meta_params, person[0], str(workdir), _settings())


def _random_source(seed: int, size: int) -> preprocess.SourceInputs:
  rng = np.random.default_rng(seed)
  return preprocess.SourceInputs(imgs=rng.uniform(-1, 1, (1, 1, size, size, 3)).astype(np.float32),
                                 segs=np.ones((1, 1, size, size, 1), np.float32),
                                 stickmen=np.zeros((1, 1, size, size, 3), np.float32),
                                 poses=np.zeros((1, 1, 136), np.float32), crop=np.zeros((size, size, 3), np.uint8),
                                 landmarks=np.zeros((68, 2), np.float32))


def test_finetuning_trains_the_identity_vector_from_the_mean_identity(meta_params, person, tuned):
  _, summary = tuned
  assert summary['start_step'] == 0 and sorted(summary['losses']) == [1, 2, 3, 4] and not summary['preempted']
  assert all(np.isfinite(v) for losses in summary['losses'].values() for v in losses.values())
  assert 'embedding_matching' not in summary['losses'][1]  # no dis_embed term when fine-tuning
  _, variables, info = model_io.load_params(summary['params'])
  assert info['metadata']['finetuned'] and info['metadata']['num_frames'] == 3
  assert info['metadata']['batch_size'] == 3  # min(N, 8)
  # The starting identity is the meta-learned animator's (EMA embedder, eval mode) over the 3 frames.
  mean_identity = np.asarray(families.animator_from_params(meta_params).init_avatar(person[0]).identity)
  _, meta_vars, meta_info = model_io.load_params(meta_params)
  tuner = finetuning.Finetuner(train_utils.TINY_LPD, meta_vars, finetune.run_config_of(meta_info), person[0],
                               _settings())
  start = tuner.initial_state()
  np.testing.assert_allclose(start['params']['generator']['identity_embedding'], mean_identity, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(start['params']['table']['embedding'], mean_identity, rtol=1e-5, atol=1e-6)
  generator, meta_generator = (v['generator']['params']['generator'] for v in (variables, meta_vars))
  assert np.abs(generator['identity_embedding'] - mean_identity).max() > 1e-7  # the EMA of a trained vector
  changed = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), generator['affine_params_projector_0'],
                                   meta_generator['affine_params_projector_0'])
  assert max(jax.tree_util.tree_leaves(changed)) > 0
  embedder, meta_embedder = (v['generator']['params']['embedder'] for v in (variables, meta_vars))
  jax.tree_util.tree_map(np.testing.assert_array_equal, embedder, meta_embedder)  # not optimised
  moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()),
                                 variables['generator']['batch_stats']['embedder'],
                                 meta_vars['generator']['batch_stats']['embedder'])
  assert max(jax.tree_util.tree_leaves(moved)) > 0  # train mode: the pose encoder's statistics moved
  d_changed = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), variables['discriminator']['params'],
                                     meta_vars['discriminator']['params'])
  assert max(jax.tree_util.tree_leaves(d_changed)) > 0


def test_the_finetuned_params_render_with_their_own_identity(meta_params, person, tuned):
  _, summary = tuned
  animator, meta_animator = families.animator_from_params(summary['params']), families.animator_from_params(meta_params)
  assert animator.finetuned and not meta_animator.finetuned
  size = train_utils.TINY_LPD.image_size
  crops = person[1]['target_imgs']
  outs = [animator.render(animator.init_avatar(photos), crops) for photos in (person[0], _random_source(1, size))]
  assert outs[0]['image'].shape == crops.shape and outs[0]['mask'].shape == crops.shape[:-1] + (1,)
  np.testing.assert_array_equal(outs[0]['image'], outs[1]['image'])  # the photos do not enter
  feed_forward = meta_animator.render(meta_animator.init_avatar(person[0]), crops)
  assert np.abs(feed_forward['image'] - outs[0]['image']).max() > 1e-6


def test_batches_are_augmented_masked_and_reproducible(meta_params, person):
  _, meta_vars, info = model_io.load_params(meta_params)
  tuner = finetuning.Finetuner(train_utils.TINY_LPD, meta_vars, finetune.run_config_of(info), person[0],
                               _settings(batch_size=5))
  batches = [tuner.batch(step) for step in range(6)]
  for name, value in tuner.batch(3).items():
    np.testing.assert_array_equal(value, batches[3][name])
  size = train_utils.TINY_LPD.image_size
  assert batches[0]['pose_frames'].shape == (5, size, size, 3) and batches[0]['target_mask'].shape == (5, size, size, 1)
  assert not batches[0]['labels'].any()
  frames = (np.concatenate([s.imgs[0] for s in person[0]]) + 1) / 2
  masks = np.concatenate([s.segs[0] for s in person[0]])
  # Samples the shift left alone: the target is one of the frames times its mask, the pose frame that frame
  # augmented (pixelwise ops or a scale, but not always).
  plain = pose_changed = 0
  for batch in batches:
    assert 0 <= batch['pose_frames'].min() and batch['pose_frames'].max() <= 1
    for pose, target, mask in zip(batch['pose_frames'], batch['target'], batch['target_mask']):
      match = [i for i in range(len(frames)) if np.array_equal(mask, masks[i])
               and np.abs(target - frames[i] * masks[i]).max() <= 1 / 255]
      if match:
        plain += 1
        pose_changed += np.abs(pose - frames[match[0]]).max() > 2 / 255
  assert plain and pose_changed


@pytest.mark.slow  # two more fine-tuning runs
def test_preempted_finetuning_resumes_to_the_uninterrupted_losses(meta_params, person, tuned, tmp_path, monkeypatch):
  """SIGTERM (the guard's flag) after step 2: its checkpoint, no params; the same call resumes."""
  _, reference = tuned
  monkeypatch.setattr(finetune.checkpoints.PreemptionGuard, 'should_stop', lambda self, manager, step: step == 2)
  stopped = finetune.finetune(meta_params, person[0], str(tmp_path), _settings())
  assert stopped['preempted'] and sorted(stopped['losses']) == [1, 2] and not (tmp_path / 'params').exists()
  monkeypatch.undo()
  resumed = finetune.finetune(meta_params, person[0], str(tmp_path), _settings())
  assert resumed['start_step'] == 2 and sorted(resumed['losses']) == [3, 4] and (tmp_path / 'params').is_dir()
  for step in (3, 4):
    for name, value in reference['losses'][step].items():
      np.testing.assert_allclose(resumed['losses'][step][name], value, rtol=1e-5, atol=1e-6)


def test_fsth_only_settings_and_finetuned_params_are_clear_errors(meta_params, person, tuned, tmp_path):
  _, summary = tuned
  with pytest.raises(errors.InvalidArgumentError, match='--train_adaptive trains FSTH'):
    finetune.finetune(meta_params, person[0], str(tmp_path / 'a'), _settings(train_adaptive=True))
  with pytest.raises(model_io.ParamsDirError, match='starts from meta-trained lpd params'):
    finetune.finetune(summary['params'], person[0], str(tmp_path / 'b'), _settings())


def test_the_command_rejects_train_adaptive_for_lpd_in_one_line(meta_params, tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'bilayer_jax.finetune', '--params', meta_params, '--frames',
                         str(tmp_path / 'none.mp4'), '--workdir', str(tmp_path / 'w'), '--train_adaptive'],
                        capture_output=True, text=True, timeout=300, cwd=train_utils.REPO)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith('error: --train_adaptive trains FSTH')


@pytest.mark.slow  # fine-tunes once per held-out video inside the protocol
def test_evaluation_feed_forward_and_finetuned(tiny_lpd_run, demo_data_dir):
  """eval.finetune_steps with LPD params: each held-out video's model fine-tuned on its K source frames (the
  official fine-tuning), then the same protocol rows as feed-forward, pose/identity errors included."""
  workdir, _ = tiny_lpd_run
  config = config_lib.from_config_dict(train_utils.tiny_lpd_config(demo_data_dir))
  base = dict(metrics=('l1', 'psnr'), max_targets=2, num_source_frames=2)
  results = {}
  for name, steps in (('ff', 0), ('ft', 2)):
    ev = config_lib.EvalConfig(**base, finetune_steps=steps, name=f'lpd_{name}')
    results[name] = evaluate.evaluate(dataclasses.replace(config, eval=ev), str(workdir), progress=False)
  for result in results.values():
    assert np.isfinite(result['self_reenactment']['summary']['psnr']) and result['pose_identity']['people'] == 2
  assert results['ft']['model']['finetune_steps'] == 2
  assert results['ft']['self_reenactment']['summary']['psnr'] != results['ff']['self_reenactment']['summary']['psnr']
