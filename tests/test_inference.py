"""Inference API: a real photo -> avatar -> rendered poses, driving frames, folding, errors.

The model is the fixtures' original run (weights produced by the ORIGINAL code, imported), so this also
covers "works with imported official weights" at a small config. The photo is scikit-image's astronaut
(a real portrait shipped in a registry package); landmarks come from the offline dlib backend.
"""

import dataclasses

import jax
import numpy as np
import pytest
import skimage.data

from bilayer_jax import model_io
from bilayer_jax.face import landmarks as landmarks_lib
from bilayer_jax.inference import animator as animator_lib
from bilayer_jax.inference import folding
from bilayer_jax.inference import preprocess
from bilayer_jax.models.bilayer import BilayerGenerator


@pytest.fixture(scope='module')
def photo():
  return skimage.data.astronaut()


@pytest.fixture(scope='module')
def anim(small_run):
  cfg, variables, _ = small_run
  return animator_lib.Animator(cfg, variables['generator'],
                               preprocessor=preprocess.FacePreprocessor(cfg.image_size, landmarks='dlib'), chunk=4)


@pytest.fixture(scope='module')
def avatar(anim, photo):
  return anim.init_avatar(photo)


def test_source_preprocessing_of_a_real_photo(anim, photo):
  src = anim.preprocessor.source(photo)
  s = anim.cfg.image_size
  assert src.imgs.shape == (1, 1, s, s, 3) and src.imgs.min() >= -1 and src.imgs.max() <= 1
  assert src.segs.shape == (1, 1, s, s, 1)
  np.testing.assert_array_equal(np.round(src.segs * 255), src.segs * 255 * 1.0)  # 8-bit, like stored masks
  assert 0.2 < src.segs.mean() < 0.9  # a person fills a good part of the crop
  # The crop rule puts the face in the middle: keypoints well inside [-1, 1], eyes above the mouth.
  pose = src.poses.reshape(68, 2)
  assert np.abs(pose).max() < 0.9
  assert pose[36:48, 1].mean() < pose[48:68, 1].mean()
  # The astronaut's face is in the upper middle of the 512x512 photo.
  centre = src.landmarks.mean(0)
  assert 150 < centre[0] < 350 and 100 < centre[1] < 300
  assert src.stickmen.shape == (1, 1, s, s, 3)


def test_init_and_render(anim, avatar):
  assert avatar.enhanced  # the fixtures' run has a texture enhancer
  poses = np.concatenate([avatar.source.poses.reshape(1, -1),
                          avatar.source.poses.reshape(1, -1) + np.linspace(-0.05, 0.05, 136)[None]])
  out = anim.render(avatar, poses)
  s = anim.cfg.image_size
  assert out['image'].shape == (2, s, s, 3) and out['mask'].shape == (2, s, s, 1)
  assert all(np.isfinite(v).all() for v in out.values())
  assert out['mask'].min() >= 0 and out['mask'].max() <= 1
  np.testing.assert_allclose(out['image'], out['lf'] + out['hf'], atol=1e-6)
  assert np.abs(out['image'][0] - out['image'][1]).max() > 1e-3  # the pose matters
  frames = anim.composite(out, background=(0, 255, 0))
  assert frames.shape == (2, s, s, 3) and frames.dtype == np.uint8
  background = anim.composite(out, background=np.zeros((100, 80, 3), np.uint8))
  assert background.shape == frames.shape


def test_render_is_chunk_invariant_and_matches_the_generator(anim, avatar):
  rng = np.random.default_rng(0)
  poses = (avatar.source.poses.reshape(1, -1) + rng.normal(0, 0.02, (7, 136))).astype(np.float32)
  out = anim.render(avatar, poses)  # 7 frames in chunks of 4 (padded)
  ref = anim.generator.apply(anim.variables, avatar.as_dict(), poses[None], method=BilayerGenerator.render)
  # Batch size changes the float summation order; the texture warp amplifies uv rounding (see the
  # folding test), so images agree to 1e-3 and the grids to 1e-5.
  np.testing.assert_allclose(out['uv'], np.asarray(ref['uvs'][0]), atol=1e-5)
  np.testing.assert_allclose(out['image'], np.asarray(ref['imgs'][0]), atol=1e-3)
  single = anim.render(avatar, poses[5:6])
  np.testing.assert_allclose(single['image'][0], out['image'][5], atol=1e-3)


def test_enhancer_can_be_switched_off(anim, photo, avatar):
  base = anim.init_avatar(avatar.source, enhance=False)
  assert not base.enhanced
  assert np.abs(np.asarray(base.texture) - np.asarray(avatar.texture)).max() > 1e-4


class _PerFrameDetector(landmarks_lib.LandmarkBackend):
  """dlib without video tracking (which would follow the face into a blank frame): detects every frame."""
  name = 'dlib-per-frame'

  def __init__(self):
    self.inner = landmarks_lib.DlibBackend()

  def detect(self, image):
    return self.inner.detect(image)


def test_drive_reuses_the_last_pose_for_faceless_frames(anim, avatar, photo):
  blank = np.full((200, 200, 3), 127, np.uint8)
  frames = [photo, blank, photo[:, ::-1], blank]
  timings = {}
  tracking = anim.preprocessor
  anim.preprocessor = preprocess.FacePreprocessor(anim.cfg.image_size, landmarks=_PerFrameDetector())
  try:
    results = list(anim.drive(avatar, frames, timings))
    first = next(anim.drive(avatar, [blank]))
  finally:
    anim.preprocessor = tracking
  assert len(results) == 4 and timings['render'] > 0
  assert [crop is None for _, crop, _ in results] == [False, True, False, True]
  # Same pose (rows of one jit call may round differently in the last bits).
  np.testing.assert_allclose(results[1][2]['image'], results[0][2]['image'], atol=1e-4)
  np.testing.assert_allclose(results[3][2]['image'], results[2][2]['image'], atol=1e-4)
  assert np.abs(results[2][2]['image'] - results[1][2]['image']).max() > 1e-2  # the mirrored face differs
  # Only faceless frames before any face: fall back to the source pose.
  np.testing.assert_allclose(first[2]['image'], anim.render(avatar, avatar.source.poses.reshape(1, -1))['image'][0],
                             atol=1e-6)


def test_photo_without_a_face_is_a_clear_error(anim):
  with pytest.raises(preprocess.NoFaceError, match=r'my_photo\.jpg: no face found by the dlib'):
    anim.preprocessor.source(np.full((300, 300, 3), 90, np.uint8), name='my_photo.jpg')


def test_params_of_another_config_are_rejected(small_run, tmp_path):
  cfg, variables, _ = small_run
  other = dataclasses.replace(cfg, inf_num_channels=8, inf_max_channels=16)
  with pytest.raises(model_io.ParamsDirError, match=r'inference_generator.*expected shape'):
    animator_lib.Animator(other, variables['generator'])
  # A params directory whose config.json does not match its arrays names the directory.
  model_io.save_params(tmp_path / 'params', other, variables)
  with pytest.raises(model_io.ParamsDirError, match=str(tmp_path / 'params')):
    animator_lib.Animator.from_params(str(tmp_path / 'params'))
  missing = {c: {n: v for n, v in t.items() if n != 'keypoints_embedder'} for c, t in variables['generator'].items()}
  with pytest.raises(model_io.ParamsDirError, match='missing.*keypoints_embedder'):
    animator_lib.Animator(cfg, missing)


def test_folded_network_matches_the_unfolded_render(anim, avatar, tmp_path):
  rng = np.random.default_rng(1)
  poses = (avatar.source.poses.reshape(1, -1) + rng.normal(0, 0.05, (5, 136))).astype(np.float32)
  unfolded = animator_lib.Animator(anim.cfg, anim.variables, anim.preprocessor, folded=False)
  unfolded_avatar = unfolded.init_avatar(avatar.source)
  assert unfolded_avatar.frame_arrays is None
  ref = unfolded.render(unfolded_avatar, poses)
  np.testing.assert_allclose(anim.render(avatar, poses)['image'], ref['image'], atol=1e-3)
  net = anim.fold(avatar)
  # One per-channel affine per block input plus the final one: norm2 is folded into conv1.
  assert not any('norm2' in k for k in net.arrays)
  for low_res in (True, False):
    out = jax.device_get(folding.frame_forward(net.spec, net.arrays, poses, low_res_upsample_conv=low_res))
    # uv and lf are tanh of the same heads conv; folding reassociates the float sums (measured: 1e-5 on one
    # uv value of 40960 with dlib's landmarks on an AVX-512 CPU, 2e-5 is 0.003 px at 256^2).
    np.testing.assert_allclose(out['uv'], ref['uv'], atol=2e-5)
    np.testing.assert_allclose(out['lf'], ref['lf'], atol=2e-5)
    np.testing.assert_allclose(out['mask'], ref['mask'], atol=2e-5)
    # hf samples the texture at uv: a uv rounding difference du moves it by |grad texture| * du * S / 2
    # (du ~1e-5, S 64, texture gradients ~2 per texel: ~6e-4), so its tolerance is looser.
    np.testing.assert_allclose(out['image'], ref['image'], atol=1e-3)
  net.save(tmp_path / 'net.npz')
  loaded = folding.FoldedFrameNet.load(tmp_path / 'net.npz')
  assert loaded.spec == net.spec and loaded.arrays.keys() == net.arrays.keys()
  np.testing.assert_array_equal(loaded.arrays['texture'], net.arrays['texture'])
