"""Tests of the LPD pose/identity errors: the formulas by hand with scripted networks, then the offline dlib
networks on real faces (the carphone clip's man and the astronaut) under known shifts and zooms."""

import numpy as np
from PIL import Image
import pytest
from skimage import data as skdata

from bilayer_jax import errors
from bilayer_jax.evaluators import pose_identity
from bilayer_jax.face import images as images_lib
from bilayer_jax.face import landmarks as landmarks_lib

SIDE = 64


def test_fit_and_normalised_error_by_hand():
  ref = np.zeros((68, 2))
  ref[:, 0] = np.arange(68)
  ref[:, 1] = np.arange(68) ** 1.5 / 10
  ref[36], ref[45] = (10, 50), (50, 50)  # outer eye corners 40 px apart
  assert pose_identity.normalised_error(ref + (3.0, 4.0), ref) == pytest.approx(5 / 40)
  # A pure scale and shift is undone exactly by the fit, which is the least-squares solution.
  pred = (ref - (7.0, -2.0)) / 1.3
  np.testing.assert_allclose(pose_identity.fit_scale_shift(pred, ref), ref, atol=1e-9)
  noisy = pred + np.random.default_rng(0).normal(0, 2, pred.shape)
  lhs = np.zeros((136, 3))
  lhs[:, 0], lhs[0::2, 1], lhs[1::2, 2] = noisy.reshape(-1), 1, 1
  scale, tx, ty = np.linalg.lstsq(lhs, ref.reshape(-1), rcond=None)[0]
  np.testing.assert_allclose(pose_identity.fit_scale_shift(noisy, ref), scale * noisy + (tx, ty), atol=1e-9)
  # Coincident eye corners: the official's 0.01 px floor keeps the value finite.
  ref[45] = ref[36]
  assert pose_identity.normalised_error(ref + (0.0, 1.0), ref) == pytest.approx(100.0)


class ScriptedBackend(landmarks_lib.LandmarkBackend):
  """A face at a position set by the image's grey level (255 - 10 k: face shifted by k px); none on black."""

  name = 'scripted'
  face = np.stack([np.linspace(10, 50, 68), np.linspace(20, 40, 68)], axis=1)

  def detect(self, image):
    level = int(image[0, 0, 0])
    return None if level == 0 else self.face + (255 - level) / 10


class ScriptedEmbedder:
  """Descriptors by grey level: 255 -> 2 e0, 245 -> 3 e1 (not unit: the metric normalises), others e2.

  Records the keypoints it was given."""

  name = 'scripted'

  def __init__(self):
    self.keypoints = []

  def __call__(self, images, keypoints):
    self.keypoints.append(np.array(keypoints))
    out = np.zeros((len(images), 3))
    for n, level in enumerate(np.round((images[:, 0, 0, 0] + 1) * 127.5)):
      out[n] = (2, 0, 0) if level == 255 else (0, 3, 0) if level == 245 else (0, 0, 1)
    return out


def grey(*levels):
  return np.stack([np.full((SIDE, SIDE, 3), v, np.uint8) for v in levels])


def test_reference_is_an_unnormalised_mean_and_only_cross_pairs_count():
  metric = pose_identity.PoseIdentityError(ScriptedEmbedder(), ScriptedBackend(), min_side=SIDE)
  reference, fallbacks = metric.identity_reference(grey(255, 245))
  np.testing.assert_allclose(reference, [0.5, 0.5, 0])  # |reference| = 0.71, kept
  assert fallbacks == 0
  # Masks composite onto black as the official: a zero mask leaves a faceless image (aligned on the mean face).
  masks = np.stack([np.ones((SIDE, SIDE)), np.zeros((SIDE, SIDE))])
  masked, fallbacks = metric.identity_reference(grey(255, 245), masks)
  np.testing.assert_allclose(masked, [0.5, 0, 0.5])
  assert fallbacks == 1
  other, _ = metric.identity_reference(grey(200))
  refs = {'a': reference, 'b': other}
  # One output that is exactly an 'a' image: 1 - <e0, (e0 + e1) / 2> = 0.5 (renormalised it would be 0.29).
  result = metric.identity_error({('a', 'b'): grey(255)}, refs)
  assert result['identity_error_scripted'] == pytest.approx(0.5)
  # Self pairs are ignored however wrong; cross frames pool: (1 - 0.5) + (1 - 0.5) + (1 - 1) over 3 frames.
  result = metric.identity_error({('a', 'b'): grey(255, 245), ('b', 'a'): grey(200), ('a', 'a'): grey(200)},
                                 refs)
  assert result['identity_error_scripted'] == pytest.approx(1 / 3)
  assert result['identity_error_scripted_frames'] == 3 and result['identity_error_scripted_pairs'] == 2
  with pytest.raises(errors.InvalidArgumentError, match='no cross pair'):
    metric.identity_error({('a', 'a'): grey(255)}, refs)
  with pytest.raises(errors.InvalidArgumentError, match=r"no reference for identities \['c'\]"):
    metric.identity_error({('c', 'a'): grey(255)}, refs)


def test_faceless_outputs_are_aligned_on_the_mean_face_and_counted():
  embedder = ScriptedEmbedder()
  metric = pose_identity.PoseIdentityError(embedder, ScriptedBackend(), min_side=SIDE)
  refs = {'a': np.array([1.0, 0, 0]), 'b': np.array([0, 1.0, 0])}
  # Faces found at offsets 0 and 2 px; the black frame is embedded with the mean face (offset 1 px).
  result = metric.identity_error({('a', 'b'): grey(255, 0), ('b', 'a'): grey(235)}, refs)
  assert result['identity_error_scripted_fallback_rate'] == pytest.approx(1 / 3)
  np.testing.assert_allclose(embedder.keypoints[0][1], ScriptedBackend.face + 1, atol=1e-4)
  # The black frame embeds as e2: (1 - 1) + (1 - 0) + (1 - 0) over 3 frames.
  assert result['identity_error_scripted'] == pytest.approx(2 / 3)
  with pytest.raises(pose_identity.NoFaceError, match='no face found on any of the 2 identity images'):
    metric.identity_reference(grey(0, 0))


def test_pose_statuses_and_evaluate_pairs_scripted():
  metric = pose_identity.PoseIdentityError(ScriptedEmbedder(), ScriptedBackend(), min_side=SIDE)
  # Frame 0: output 1 px off (diagonal); 1: no face on the output (failure); 2: none on the driver (skipped).
  result = metric.pose_error(grey(245, 0, 255), grey(255, 255, 0))
  iod = np.linalg.norm(ScriptedBackend.face[36] - ScriptedBackend.face[45])
  assert result['pose_error_scripted'] == pytest.approx(np.sqrt(2) / iod)
  assert result['pose_error_fit_scripted'] == pytest.approx(0, abs=1e-6)  # float32 landmarks
  assert result['pose_error_scripted_fail_rate'] == 0.5 and result['pose_error_scripted_frames'] == 1
  assert result['pose_error_scripted_skipped'] == 1
  # evaluate: self pairs (with their drivers) give the pose error, cross pairs the identity error.
  out = metric.evaluate({('a', 'a'): grey(245, 255, 0), ('a', 'b'): grey(0, 255, 200), ('b', 'a'): grey(245)},
                        {'a': grey(255), 'b': grey(245)}, {'a': grey(255, 255, 255, 245)}, num_frames=2)
  assert out['pose_error_scripted'] == pytest.approx(np.sqrt(2) / iod / 2)  # frames 0 and 1 of the self pair
  assert out['pose_error_scripted_frames'] == 2 and out['pose_error_scripted_fail_rate'] == 0
  # Cross frames (num_frames=2): black -> e2 (error 1), then e0 and e1 matching their references (error 0).
  assert out['identity_error_scripted'] == pytest.approx(1 / 3) and out['identity_error_scripted_frames'] == 3
  assert out['identity_error_scripted_fallback_rate'] == pytest.approx(1 / 3)
  assert out['identity_reference_fallback_rate'] == 0
  with pytest.raises(errors.InvalidArgumentError, match=r"no driving frames for identities \['b'\]"):
    metric.evaluate({('b', 'b'): grey(255)}, {}, {})
  with pytest.raises(errors.InvalidArgumentError, match='has 3 self-reenacted frames but only 1 driving'):
    metric.evaluate({('a', 'a'): grey(255, 255, 255)}, {}, {'a': grey(255)})


@pytest.fixture(scope='module')
def people():
  """Several 256 px images of two real people: carphone clip frames (face crops by the data pipeline's rule)
  and astronaut crops at different offsets and exposures."""
  from bilayer_jax.data import samples  # pylint: disable=g-import-not-at-top
  from bilayer_jax.face import crop as crop_lib  # pylint: disable=g-import-not-at-top
  from bilayer_jax.inference import video  # pylint: disable=g-import-not-at-top
  backend = landmarks_lib.get_landmark_backend('dlib')
  frames = list(video.read_video(samples.carphone_path(), 120))[::15]
  carphone = np.stack([crop_lib.crop_face(f, backend.detect(f), 256)[0] for f in frames])
  photo = skdata.astronaut()
  astronaut = np.stack([np.round(images_lib.resize_bicubic(photo[dy:400 + dy, 50 + dx:450 + dx], 256) * gain)
                        .clip(0, 255).astype(np.uint8) for dy, dx, gain in
                        ((0, 0, 1.0), (20, -20, 0.85), (-0, 30, 1.1), (40, 10, 0.95), (10, 40, 0.9), (30, -30, 1.0),
                         (5, 5, 0.8), (25, 25, 1.05))])
  return {'carphone': carphone, 'astronaut': astronaut}


@pytest.fixture(scope='module')
def dlib_metric():
  return pose_identity.PoseIdentityError('dlib', 'dlib')


def test_identity_error_separates_people_with_dlib(people, dlib_metric):
  refs = {name: dlib_metric.identity_reference(images[:4])[0] for name, images in people.items()}
  own = dlib_metric.identity_error({('carphone', 'astronaut'): people['carphone'][4:],
                                    ('astronaut', 'carphone'): people['astronaut'][4:]}, refs)
  swapped = dlib_metric.identity_error({('carphone', 'astronaut'): people['astronaut'][4:],
                                        ('astronaut', 'carphone'): people['carphone'][4:]}, refs)
  same, other = own['identity_error_dlib'], swapped['identity_error_dlib']
  print(f'identity_error_dlib: same person {same:.4f}, other person {other:.4f}')
  assert same < 0.04 and other > 0.1 and other > 5 * same  # dlib descriptors of strangers still agree ~0.8
  assert own['identity_error_dlib_fallback_rate'] == 0
  # A self pair with the other person's face changes nothing; a black frame falls back and is counted.
  with_self = dlib_metric.identity_error({('carphone', 'astronaut'): people['carphone'][4:],
                                          ('astronaut', 'carphone'): people['astronaut'][4:],
                                          ('carphone', 'carphone'): people['astronaut'][:2]}, refs)
  assert with_self['identity_error_dlib'] == pytest.approx(same, abs=1e-12)
  black = np.zeros((1, 256, 256, 3), np.uint8)
  failed = dlib_metric.identity_error({('carphone', 'astronaut'): np.concatenate([people['carphone'][4:], black])},
                                      refs)
  assert failed['identity_error_dlib_fallback_rate'] == pytest.approx(1 / 5)
  assert np.isfinite(failed['identity_error_dlib'])


def _affine(images, scale=1.0, dx=0.0, dy=0.0):
  """Content zoomed by `scale` about the image centre, then moved by (dx, dy) px (bicubic)."""
  c = (images.shape[1] - 1) / 2
  coeffs = (1 / scale, 0, c - (c + dx) / scale, 0, 1 / scale, c - (c + dy) / scale)
  return np.stack([np.asarray(Image.fromarray(img).transform(img.shape[1::-1], Image.AFFINE, coeffs,
                                                               Image.BICUBIC)) for img in images])


def test_pose_error_follows_known_shifts_and_zooms_with_dlib(people, dlib_metric):
  drivers = people['astronaut'][:3]
  assert dlib_metric.pose_error(drivers, drivers)['pose_error_dlib'] == 0
  lms = dlib_metric.landmarks(drivers)
  iod = np.linalg.norm(lms[:, 36] - lms[:, 45], axis=-1)
  centre = (drivers.shape[1] - 1) / 2
  previous = 0.0
  for scale, dx, dy in ((1.0, 4, 2), (1.0, 10, 5), (1.1, 0, 0), (1.2, 0, 0), (1.1, 6, -6)):
    result = dlib_metric.pose_error(_affine(drivers, scale, dx, dy), drivers)
    moved = (lms - centre) * scale + centre + (dx, dy)
    expected = np.mean(np.linalg.norm(moved - lms, axis=-1).mean(-1) / iod)
    plain, fitted = result['pose_error_dlib'], result['pose_error_fit_dlib']
    print(f'scale {scale} shift ({dx}, {dy}): pose_error_dlib {plain:.4f} (geometry {expected:.4f}), '
          f'fitted {fitted:.4f}')
    assert plain == pytest.approx(expected, rel=0.05)
    assert fitted < 0.03 and fitted < plain / 4
    if scale == 1.0:
      assert plain > previous  # grows with the shift
      previous = plain
  # A black output is a failure (left out); a black driving frame is skipped.
  black = np.zeros((1,) + drivers.shape[1:], np.uint8)
  result = dlib_metric.pose_error(np.concatenate([drivers, black, drivers[:1]]),
                                  np.concatenate([drivers, drivers[:1], black]))
  assert result['pose_error_dlib'] == 0 and result['pose_error_dlib_frames'] == 3
  assert result['pose_error_dlib_fail_rate'] == 0.25 and result['pose_error_dlib_skipped'] == 1
