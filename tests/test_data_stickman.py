"""Stickman rendering is pixel-identical to the original's.

tests/fixtures/original_small/stickman.npz comes from the original code: 10
poses (frames of the parity inputs, then extra cases: large jitter and points
exactly on pixel boundaries) drawn by the original ``draw_stickmen`` at 64 and
256 px (NCHW).
"""

import os

import numpy as np
import pytest

from bilayer_jax.data import stickman

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures',
                       'original_small', 'stickman.npz')


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


@pytest.mark.parametrize('key,size', [('stickmen', 64),
                                      ('stickmen_256', 256)])
def test_pixel_identical_to_original(fixture, key, size):
  out = stickman.draw_stickmen(fixture['poses'], size)
  expected = fixture[key].transpose(0, 2, 3, 1)  # NCHW -> NHWC
  assert out.shape == expected.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out, expected)


def test_fixture_has_points_on_pixel_boundaries(fixture):
  extra = fixture['poses'][int(fixture['n_from_inputs']):]
  for size in (64, 256):
    xy = (extra + np.float32(1)) / np.float32(2) * np.float32(size)
    assert np.any(xy == np.round(xy))


def test_points_outside_the_image_are_clipped():
  pose = np.linspace(-1.5, 1.5, 136, dtype=np.float32)[None]
  out = stickman.draw_stickmen(pose, 32)
  assert out.shape == (1, 32, 32, 3) and (out > -0.99).any()


def test_background_and_colours():
  pose = np.zeros((1, 136), np.float32)  # every point at the centre
  out = stickman.draw_stickmen(pose, 32)[0]
  background = (np.float32(1) / 255 - np.float32(.5)) * 2
  assert out[0, 0].tolist() == [background] * 3
  # The inner lips are drawn last, in (255, 255, 0).
  np.testing.assert_array_equal(out[16, 16], [1, 1, -1])


def test_thickness_and_batch_shape():
  rng = np.random.default_rng(0)
  poses = rng.uniform(-.8, .8, (3, 136)).astype(np.float32)
  thin = stickman.draw_stickmen(poses, 48, thickness=1)
  thick = stickman.draw_stickmen(poses, 48, thickness=3)
  assert thin.shape == (3, 48, 48, 3)
  drawn = lambda x: (x > -0.99).any(-1).sum()
  assert drawn(thick) > drawn(thin)
