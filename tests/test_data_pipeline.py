"""Input pipeline: loader parity, sampler properties, sharding, determinism.

The dataset is imported from a small tree in the ORIGINAL's layout
(imgs/keypoints/segs), so every output frame can be compared with what the
original's loader computes from the same files (docs/model.md#loading-and-normalisation), re-implemented
here independently with PIL.
"""

import io
import json
import pathlib

import cv2
import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bilayer_jax.data import input_pipeline
from bilayer_jax.data import stickman
from data_prep import build
from data_prep import builder as builder_lib
from data_prep import process

STORED = 48  # frame size in the original-layout tree
NAME = 'talking_heads/orig'


def reference_frame(root, split, rel, image_size):
  """The original loader's normalisation of one frame, from its files."""
  img = Image.open(root / 'imgs' / split / f'{rel}.jpg')
  width = img.size[0]
  img = img.resize((image_size, image_size), Image.BICUBIC)
  img = (np.asarray(img, np.float32) / 255 - .5) * 2
  kps = np.load(root / 'keypoints' / split / f'{rel}.npy').astype(
      np.float32)[:68, :2] / width
  seg = Image.open(root / 'segs' / split / f'{rel}.png').convert('L')
  seg = np.asarray(seg.resize((image_size, image_size), Image.BICUBIC),
                   np.float32)[..., None] / 255
  return img, seg, ((kps - .5) * 2).reshape(-1)


def write_frame(root, split, rel, rng, seg_mode='L', kp_cols=2):
  for tree in ('imgs', 'keypoints', 'segs'):
    (root / tree / split / rel).parent.mkdir(parents=True, exist_ok=True)
  pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
  Image.fromarray(pixels).resize((STORED, STORED), Image.BILINEAR).save(
      root / 'imgs' / split / f'{rel}.jpg', quality=90)
  kps = rng.uniform(4, STORED - 4, (68, kp_cols)).astype(np.float32)
  np.save(root / 'keypoints' / split / f'{rel}.npy', kps)
  mask = Image.fromarray(rng.integers(0, 256, (STORED, STORED),
                                      dtype=np.uint8)).convert(seg_mode)
  mask.save(root / 'segs' / split / f'{rel}.png')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """4 train videos (2 sequences x 3 frames) and 2 test videos."""
  root = tmp_path_factory.mktemp('orig')
  rng = np.random.default_rng(0)
  for split, people in (('train', 'abcd'), ('test', 'ef')):
    for p in people:
      for s in range(2):
        for f in range(3):
          rel = f'{p}/vid/seq{s}/{f:04d}'
          write_frame(root, split, rel, rng,
                      seg_mode='RGB' if p == 'b' else 'L',
                      kp_cols=3 if p == 'c' else 2)
  # Unusable frames: a corrupt JPEG (dropped, reported) and a frame without
  # a mask (not in all three trees: ignored, as by the original).
  (root / 'imgs/train/d/vid/seq1/0002.jpg').write_bytes(b'corrupt')
  (root / 'segs/test/f/vid/seq0/0001.png').unlink()
  config = builder_lib.TalkingHeadsConfig(
      name='orig', source='original', frames_per_example=4,
      options=process.Options(image_size=STORED))
  data_dir = tmp_path_factory.mktemp('tfds')
  build.build_dataset(config, str(data_dir), str(root), num_workers=1,
                      progress=False, num_shards=2)
  return root, str(data_dir)


@pytest.fixture(scope='module')
def frame_index(dataset):
  """pose -> (split, 'person/vid/seq/frame') for every source frame."""
  root, _ = dataset
  index = {}
  for path in sorted((root / 'keypoints').rglob('*.npy')):
    rel = path.relative_to(root / 'keypoints')
    split, key = rel.parts[0], str(rel.with_suffix('')).split('/', 1)[1]
    kps = np.load(path).astype(np.float32)[:68, :2] / STORED
    index[((kps - .5) * 2).reshape(-1).tobytes()] = (split, key)
  return index


def lookup(frame_index, pose):
  matches = [v for k, v in frame_index.items()
             if np.abs(np.frombuffer(k, np.float32) - pose).max() < 1e-5]
  assert len(matches) == 1
  return matches[0]


def make(data_dir, split='train', **kwargs):
  args = dict(image_size=STORED, num_source_frames=1, num_target_frames=1,
              batch_size=2, seed=0, dataset_name=NAME)
  args.update(kwargs)
  return input_pipeline.create_dataset(data_dir, split, **args)


def test_import_report(dataset):
  _, data_dir = dataset
  builder = input_pipeline.load_builder(data_dir, NAME)
  assert builder.info.splits['train'].num_examples == 8  # 4 videos x 2
  assert builder.info.splits['train'].num_shards == 2
  summary = builder.info.metadata['summary']
  assert summary['dropped_frames'] == {'unreadable': 1}
  assert summary['frames_kept'] == 6 * 6 - 2
  report = pathlib.Path(builder.info.metadata['work_dir']) / 'report.jsonl'
  statuses = {s['key']: s for s in map(json.loads,
                                       report.read_text().splitlines())}
  assert any('0002' in e for e in statuses['d/vid']['errors'])
  assert statuses['f/vid']['frames_read'] == 5  # frame without a mask


@pytest.mark.parametrize('image_size', [STORED, 32])
def test_matches_original_loader(dataset, frame_index, image_size):
  root, data_dir = dataset
  ds = make(data_dir, image_size=image_size, num_target_frames=2,
            shuffle=False, repeat=False, batch_size=1)
  seen = 0
  for batch in ds.as_numpy_iterator():
    for side, n in (('source', 1), ('target', 2)):
      assert batch[f'{side}_imgs'].shape == (1, n, image_size, image_size, 3)
      for t in range(n):
        pose = batch[f'{side}_poses'][0, t]
        split, key = lookup(frame_index, pose)
        img, seg, ref_pose = reference_frame(root, split, key, image_size)
        np.testing.assert_allclose(batch[f'{side}_imgs'][0, t], img,
                                   atol=1e-6)
        np.testing.assert_allclose(batch[f'{side}_segs'][0, t], seg,
                                   atol=1e-6)
        np.testing.assert_allclose(pose, ref_pose, atol=1e-6)
        np.testing.assert_array_equal(
            batch[f'{side}_stickmen'][0, t],
            stickman.draw_stickmen(pose[None], image_size)[0])
        seen += 1
  assert seen == 8 * 3


def test_frames_of_one_video_and_source_differs_from_target(dataset,
                                                            frame_index):
  _, data_dir = dataset
  for batch in make(data_dir, batch_size=4).take(10).as_numpy_iterator():
    for b in range(4):
      src = lookup(frame_index, batch['source_poses'][b, 0])
      tgt = lookup(frame_index, batch['target_poses'][b, 0])
      assert src != tgt
      assert src[1].split('/')[0] == tgt[1].split('/')[0]


@pytest.mark.parametrize('num_frames,k', [(1, 2), (2, 2), (3, 2), (3, 5),
                                          (5, 5), (40, 3)])
def test_sampler_properties(num_frames, k):
  draws = []
  for s in range(50):
    idx = input_pipeline.sample_frame_indices(
        tf.constant(num_frames), k, tf.constant([7, s])).numpy()
    assert idx.shape == (k,) and idx.min() >= 0 and idx.max() < num_frames
    if num_frames >= k:
      assert len(set(idx)) == k  # all distinct
    else:  # cyclic: every frame used, as evenly as possible
      counts = np.bincount(idx, minlength=num_frames)
      assert counts.max() - counts.min() <= 1
    if num_frames >= 2:
      assert idx[0] not in idx[1:min(k, num_frames)]
    again = input_pipeline.sample_frame_indices(
        tf.constant(num_frames), k, tf.constant([7, s])).numpy()
    np.testing.assert_array_equal(idx, again)
    draws.append(tuple(idx))
  if num_frames >= 3:
    assert len(set(draws)) > 1  # seeds matter
    firsts = np.bincount([d[0] for d in draws], minlength=num_frames)
    assert (firsts > 0).sum() > 1


def _poses(ds, batches):
  return [b['source_poses'] for b in ds.take(batches).as_numpy_iterator()]


def test_deterministic_for_a_seed(dataset):
  _, data_dir = dataset
  a = _poses(make(data_dir, seed=5), 6)
  b = _poses(make(data_dir, seed=5), 6)
  c = _poses(make(data_dir, seed=6), 6)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))


def _examples_seen(data_dir, frame_index, index, count):
  ds = make(data_dir, shuffle=False, repeat=False, batch_size=1,
            process_index=index, process_count=count)
  seen = set()
  for batch in ds.as_numpy_iterator():
    split, key = lookup(frame_index, batch['source_poses'][0, 0])
    person, _, seq, frame = key.split('/')
    # frames_per_example=4 splits each 6-frame video into 2 examples of
    # every other frame: the example is (person, position parity).
    position = 3 * int(seq[-1]) + int(frame)
    seen.add((person, position % 2))
  return seen


def test_per_host_file_sharding(dataset, frame_index):
  _, data_dir = dataset
  host0 = _examples_seen(data_dir, frame_index, 0, 2)
  host1 = _examples_seen(data_dir, frame_index, 1, 2)
  assert host0 and host1 and not host0 & host1
  everything = _examples_seen(data_dir, frame_index, 0, 1)
  assert host0 | host1 == everything and len(everything) == 8


def test_more_hosts_than_files_splits_examples(dataset, frame_index):
  _, data_dir = dataset
  hosts = [_examples_seen(data_dir, frame_index, i, 3) for i in range(3)]
  assert all(len(h) == 2 for h in hosts)  # 8 // 3, remainder dropped
  assert not (hosts[0] & hosts[1] or hosts[1] & hosts[2]
              or hosts[0] & hosts[2])


def test_make_global_batch(dataset):
  _, data_dir = dataset
  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  sharding = jax.sharding.NamedSharding(mesh,
                                        jax.sharding.PartitionSpec('data'))
  batch = next(make(data_dir, batch_size=len(devices)).as_numpy_iterator())
  arrays = input_pipeline.make_global_batch(batch, sharding)
  assert set(arrays) == set(batch)
  for key, value in batch.items():
    assert isinstance(arrays[key], jax.Array)
    assert arrays[key].sharding == sharding
    np.testing.assert_array_equal(np.asarray(arrays[key]), value)


def test_import_resizes_and_scales_keypoints(tmp_path):
  rng = np.random.default_rng(1)
  for f in range(2):
    write_frame(tmp_path / 'src', 'train', f'p/v/s/{f:04d}', rng)
  config = builder_lib.TalkingHeadsConfig(
      name='small', source='original',
      options=process.Options(image_size=32))
  build.build_dataset(config, str(tmp_path / 'tfds'), str(tmp_path / 'src'),
                      num_workers=1, progress=False)
  builder = input_pipeline.load_builder(str(tmp_path / 'tfds'),
                                        'talking_heads/small')
  skip = {'frames': tfds.decode.SkipDecoding()}
  example = next(iter(builder.as_dataset(
      'train', decoders=skip).as_numpy_iterator()))
  for f in range(2):
    img, _, pose = reference_frame(tmp_path / 'src', 'train',
                                   f'p/v/s/{f:04d}', 32)
    # Stored = the loader's PIL bicubic resize, JPEG-encoded at quality 95.
    resized = np.round((img + 1) / 2 * 255).astype(np.uint8)
    _, jpeg = cv2.imencode('.jpg', resized[..., ::-1],
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
    expected = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1]
    stored = cv2.imdecode(np.frombuffer(example['frames'][f], np.uint8),
                          cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(stored, expected)
    np.testing.assert_allclose(example['keypoints'][f] / 32 * 2 - 1,
                               pose.reshape(68, 2), atol=1e-6)
  seg = Image.open(io.BytesIO(tf.io.encode_png(example['segs'][0]).numpy()))
  assert seg.size == (32, 32)


def test_fsth_sketches_and_video_indices(dataset, frame_index):
  """landmark_style='fsth_sketch' draws the FSTH reference's sketches of each frame's keypoints; the
  video index is the example's dense index in the split: one per example (so one per frame), the same
  under any shuffle, and split between hosts without overlap."""
  _, data_dir = dataset

  def indices(**kwargs):
    ds = make(data_dir, num_source_frames=2, landmark_style='fsth_sketch', with_video_index=True,
              batch_size=1, **kwargs)
    found = {}  # frame key -> video indices seen with it
    for batch in ds.as_numpy_iterator():
      pose = batch['source_poses'][0, 1]
      expected = stickman.draw_fsth_sketches(pose[None], STORED)[0]
      np.testing.assert_array_equal(batch['source_stickmen'][0, 1], expected)
      assert (batch['source_stickmen'] == 1).mean() > 0.3  # white paper (2-point lines cover much of 48²)
      for pose in list(batch['source_poses'][0]) + list(batch['target_poses'][0]):
        found.setdefault(lookup(frame_index, pose)[1], set()).add(int(batch['video_index'][0]))
    assert all(len(i) == 1 for i in found.values())
    return {frame: i.pop() for frame, i in found.items()}

  in_order = indices(shuffle=False, repeat=False)
  num_examples = input_pipeline.load_builder(data_dir, NAME).info.splits['train'].num_examples
  assert sorted(set(in_order.values())) == list(range(num_examples))
  shuffled = indices(shuffle=True, seed=3, repeat=False)
  assert all(in_order[frame] == index for frame, index in shuffled.items())
  hosts = [indices(shuffle=False, repeat=False, process_index=h, process_count=2) for h in (0, 1)]
  assert not set(hosts[0].values()) & set(hosts[1].values())
  assert set(hosts[0].values()) | set(hosts[1].values()) == set(range(num_examples))
