"""FSTH landmark sketches against the reference's own drawing function (tests/fixtures/fsth_small/sketch.npz,
README there §8): pixel-identical, including the reference's shrinking when a landmark leaves the frame."""

import pathlib

import numpy as np
import pytest

from bilayer_jax.face import sketch

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'fsth_small' / 'sketch.npz'


@pytest.mark.parametrize('case', [0, 1, 2], ids=['224x224', '200x256', 'landmark-outside'])
def test_sketches_equal_the_references_pixel_for_pixel(case):
  with np.load(FIXTURE) as data:
    reference, landmarks = data[f'sketch{case}'], data[f'landmarks{case}']
  ours = sketch.sketch(landmarks, *reference.shape[:2])
  assert ours.dtype == np.uint8 and ours.shape == reference.shape
  np.testing.assert_array_equal(ours, reference)


def test_clip_to_frame_keeps_the_sketch_aligned_with_the_frame():
  with np.load(FIXTURE) as data:
    inside, outside = data['landmarks0'], data['landmarks2']
  moved = outside.copy()
  moved[0] = inside[0]  # the same face without the stray point... except that point's own segment
  shrunk = sketch.sketch(outside, 224, 224)
  clipped = sketch.sketch(outside, 224, 224, clip_to_frame=True)
  reference = sketch.sketch(moved, 224, 224, clip_to_frame=True)
  drawn = lambda image: (image < 200).any(axis=-1)
  # Away from the jaw's first segment, the clipped sketch matches an in-frame drawing; the shrunk one does not.
  region = (slice(0, 224), slice(60, 224))
  assert (drawn(clipped)[region] != drawn(reference)[region]).mean() < 0.002
  assert (drawn(shrunk)[region] != drawn(reference)[region]).mean() > 0.02
  with pytest.raises(ValueError, match=r'\(68, 2\)'):
    sketch.sketch(inside[:10], 224, 224)
