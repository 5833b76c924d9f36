"""The process pool survives worker deaths (e.g. a crash in native code).

Kept apart from the other data tests and free of TensorFlow/JAX imports:
the spawned workers import this module to find the crashing backend.
"""

import json
import os

import av
import pytest

from bilayer_jax.data import samples
from bilayer_jax.face import segmentation
from data_prep import process
from data_prep import runner
from data_prep import sources

import media_utils


class CrashingSegmentation(segmentation.SegmentationBackend):
  """Kills its process, like a segfault in a native decoder or model."""

  def __init__(self, **unused_kwargs):
    pass

  def segment(self, crop):
    os._exit(3)


@pytest.fixture
def two_videos(tmp_path):
  with av.open(samples.carphone_path()) as c:
    frames = [f.to_ndarray(format='rgb24') for _, f in
              zip(range(3), c.decode(video=0))]
  for person in ('anna', 'ben'):
    media_utils.write_clip(tmp_path / 'in' / person / 'talk' / 'c1.mp4', frames)
  return tmp_path / 'in'


def test_worker_crash_is_skipped_and_reported(two_videos, tmp_path):
  jobs, _ = sources.discover(str(two_videos), test_fraction=0.0)
  options = process.Options(
      image_size=64, landmarks='dlib',
      segmentation=f'{__name__}:CrashingSegmentation')
  work = runner.process_jobs(jobs, options, tmp_path / 'work', num_workers=2,
                             progress=False)
  for job in jobs:
    status = work.status(job)
    assert status['status'] == 'skipped'
    assert status['reason_code'] == 'worker_crash'
  summary = runner.write_report(jobs, work)
  assert summary['skip_reasons'] == {'worker_crash': 2}
  assert summary['splits'] == {'train': {'videos': 0,
                                         'skipped': {'worker_crash': 2}}}
  lines = (work.path / 'report.jsonl').read_text().splitlines()
  assert all(json.loads(l)['status'] == 'skipped' for l in lines)
