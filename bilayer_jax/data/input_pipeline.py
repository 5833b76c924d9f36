"""tf.data input pipeline over ``talking_heads`` TFRecords (data_prep/).

Per example (one video, or one chunk of a long video; chunks span the whole
video, see data_prep) the pipeline picks ``n + T`` of its frames, decodes
only those, and normalises them exactly as the original's loader
(docs/model.md#loading-and-normalisation): PIL bicubic resize to ``image_size`` (skipped when the stored
size already matches, as PIL does), images and masks scaled to [-1, 1] and
[0, 1], keypoints divided by the stored image width and mapped to [-1, 1].
Stickmen are drawn from those keypoints with the original's renderer.

Frame sampling (differs from the original, see data_prep/README.md): a
uniformly random permutation of the L frames, from a stateless seed
``(seed, process_index, element_index)``; the first n are the sources, the
next T the targets. All n + T frames are distinct when L >= n + T; otherwise
the permutation repeats cyclically (the first min(L, n + T) are distinct), so
the first target differs from every source whenever L > n (n = T = 1 needs
only L >= 2).

Determinism: the same seed gives the same batches (file order, shuffle and
frame choice are all seeded); the trainer folds its step into the seed on
resume because iterator state is not checkpointed.

Multi-host: each host reads a disjoint subset of the TFRecord files
(``jax.process_index() / jax.process_count()``), or every count-th example
when a split has fewer files than hosts; batches are host-local and become
global arrays with ``make_global_batch``. The records are read with plain
tf.data and tfds' example parser (tfds' own decoders would run a map_fn over
every frame of the example and decode JPEGs with the fast, inexact IDCT).
"""

import functools
import os
from typing import Callable, Optional

import jax
import numpy as np
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

from bilayer_jax import errors
from bilayer_jax.data import stickman

DEMO_DATASET_NAME = 'talking_heads/demo'
FEATURE_KEYS = ('imgs', 'segs', 'poses', 'stickmen')


def sample_frame_indices(num_frames: tf.Tensor, num_samples: int,
                         seed: tf.Tensor) -> tf.Tensor:
  """(num_samples,) int32 indices in [0, num_frames), see module docstring."""
  scores = tf.random.stateless_uniform(tf.reshape(num_frames, [1]), seed)
  perm = tf.argsort(scores, stable=True)
  return tf.gather(perm, tf.range(num_samples) % num_frames)


def _pil_resize(images: np.ndarray, size: int) -> np.ndarray:
  """Bicubic PIL resize of a uint8 (k, H, W, C) stack, as the original."""
  out = []
  for img in images:
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    res = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
    out.append(res.reshape(size, size, img.shape[-1]))
  return np.stack(out)


def _resize(images: tf.Tensor, size: int) -> tf.Tensor:
  """PIL bicubic resize (TF's bicubic differs by 1 LSB on ~15% of pixels)."""
  out = tf.numpy_function(lambda x: _pil_resize(x, size), [images], tf.uint8,
                          stateful=False)
  return tf.ensure_shape(out, [images.shape[0], size, size, images.shape[-1]])


def _draw_stickmen(poses: tf.Tensor, image_size: int,
                   thickness: int, style: str = 'stickman') -> tf.Tensor:
  draw = stickman.STYLES[style]
  out = tf.numpy_function(
      lambda p: draw(p, image_size, thickness), [poses],
      tf.float32, stateful=False)
  return tf.ensure_shape(out, [poses.shape[0], image_size, image_size, 3])


def _select(example, index, *, num_samples: int, seed: tf.Tensor):
  """Keeps only the encoded bytes and keypoints of the sampled frames."""
  num_frames = tf.shape(example['frames'])[0]
  idx = sample_frame_indices(num_frames, num_samples,
                             tf.stack([seed, tf.cast(index, tf.int32)]))
  return {'frames': tf.gather(example['frames'], idx),
          'segs': tf.gather(example['segs'], idx),
          'keypoints': tf.gather(example['keypoints'], idx),
          'example_index': example['example_index']}


def decode_frames(selected, *, image_size: int, stored_size: int,
                  num_source: int, thickness: int, landmark_style: str = 'stickman'):
  """Decodes and normalises the selected frames into the batch dict.

  `selected`: {'frames', 'segs'} encoded bytes and 'keypoints' of k frames;
  the first `num_source` become source_*, the rest target_*. Also used
  eagerly by the evaluation protocol, so it sees exactly the training inputs.
  `landmark_style`: how the `*_stickmen` images are drawn (`stickman.STYLES`).
  """
  k = selected['frames'].shape[0]
  # INTEGER_ACCURATE is libjpeg's ISLOW, which PIL uses: identical pixels.
  imgs = tf.stack([tf.io.decode_jpeg(selected['frames'][i], channels=3,
                                     dct_method='INTEGER_ACCURATE')
                   for i in range(k)])
  segs = tf.stack([tf.io.decode_png(selected['segs'][i], channels=1)
                   for i in range(k)])
  # Like PIL, which returns an unchanged copy, skip resizing at equal size.
  if stored_size != image_size:
    imgs, segs = _resize(imgs, image_size), _resize(segs, image_size)
  poses = tf.reshape(selected['keypoints'] / float(stored_size) * 2. - 1.,
                     [k, 136])
  imgs = tf.cast(imgs, tf.float32) / 255. * 2. - 1.
  segs = tf.cast(segs, tf.float32) / 255.
  stickmen = _draw_stickmen(poses, image_size, thickness, landmark_style)
  out = {}
  for name, value in zip(FEATURE_KEYS, (imgs, segs, poses, stickmen)):
    out[f'source_{name}'] = tf.ensure_shape(value[:num_source],
                                            [num_source] + value.shape[1:])
    out[f'target_{name}'] = tf.ensure_shape(value[num_source:],
                                            [k - num_source] + value.shape[1:])
  return out


class DatasetNotFoundError(errors.UserError, FileNotFoundError):
  """No prepared dataset of that name in the data directory."""


def load_builder(data_dir: str, dataset_name: str = DEMO_DATASET_NAME):
  """The tfds builder of a prepared dataset, read from its files only."""
  try:
    return tfds.core.read_only_builder.builder_from_files(
        dataset_name, data_dir=os.path.expanduser(data_dir))
  except (tfds.core.DatasetNotFoundError, FileNotFoundError) as e:
    raise DatasetNotFoundError(
        f'no prepared dataset {dataset_name!r} in {data_dir} (config.data.name / '
        'config.data.data_dir); build one with `python -m data_prep.build`'
    ) from e


def dataset_crop_style(data_dir: str, dataset_name: str) -> str:
  """The face crop rule a prepared dataset was built with (bilayer_jax.face.crop.CROP_STYLES); datasets
  built before the option existed are 'original'."""
  options = load_builder(data_dir, dataset_name).info.metadata.get('options') or {}
  return options.get('crop_style', 'original')


def _host_records(builder, split: str, index: int, count: int, seed: int,
                  shuffle: bool, repeat: bool) -> tf.data.Dataset:
  """(example index in the split, serialized example) pairs of this host.

  With at least as many files as hosts, host i reads files i, i + count, ...
  Otherwise every host reads all files in the same (seeded) order and keeps
  every count-th example; without repeat each host then gets the same number
  of examples (the remainder is dropped) so that evaluation loops agree.
  The example index (file offset + position in the file) is dense in
  [0, num_examples) and the same on every host and run.
  """
  info = builder.info.splits[split]
  offsets = np.concatenate([[0], np.cumsum(info.shard_lengths)[:-1]]).astype(np.int64)
  pairs = sorted(zip((os.path.join(builder.data_dir, f) for f in info.filenames), offsets))
  per_file = len(pairs) >= count
  if per_file:
    pairs = pairs[index::count]
  ds = tf.data.Dataset.from_tensor_slices(([p[0] for p in pairs], [p[1] for p in pairs]))
  if shuffle:
    # The same seed on every host: example sharding needs one file order.
    ds = ds.shuffle(len(pairs), seed=seed % 2**63,
                    reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()

  def records(path, offset):
    return tf.data.TFRecordDataset(path).enumerate().map(lambda i, record: (tf.cast(offset, tf.int64) + i, record))

  ds = ds.interleave(records, cycle_length=min(len(pairs), 16), block_length=1,
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if not per_file:
    ds = ds.shard(count, index)
    if not repeat:
      ds = ds.take(info.num_examples // count)
  return ds


def create_dataset(data_dir: str, split: str, *, image_size: int,
                   num_source_frames: int, num_target_frames: int,
                   batch_size: int, seed: int, shuffle: bool = True,
                   repeat: bool = True, process_index: int | None = None,
                   process_count: int | None = None,
                   dataset_name: str = DEMO_DATASET_NAME,
                   shuffle_buffer: int = 512, stickmen_thickness: int = 2,
                   landmark_style: str = 'stickman', with_video_index: bool = False,
                   example_transform: Optional[Callable[[dict, tf.Tensor], dict]] = None
                   ) -> tf.data.Dataset:
  """Host-local batches of source/target frames of the same video.

  Args:
    data_dir: tfds data_dir holding the dataset.
    split: a split name ('train', 'test').
    image_size: side S of the output images.
    num_source_frames: n source frames per example.
    num_target_frames: T target frames per example.
    batch_size: examples per batch on THIS host (drop_remainder).
    seed: base seed; fold the training step in on resume.
    shuffle: shuffle files and examples (off: fixed order, e.g. for eval).
    repeat: loop forever.
    process_index: this host (default jax.process_index()).
    process_count: number of hosts (default jax.process_count()).
    dataset_name: 'talking_heads/<config>'.
    shuffle_buffer: examples in the shuffle buffer (after frame selection,
      so each holds only n + T encoded frames).
    stickmen_thickness: stickman line width (original: 2).
    landmark_style: 'stickman' (bi-layer) or 'fsth_sketch' (the FSTH
      reference's coloured sketches), see `stickman.STYLES`.
    with_video_index: add 'video_index' (B,) int32, the example's index in
      the split (dense in [0, num_examples): one example is one video, so
      per-video parameters such as FSTH's embedding matrix are its rows).
    example_transform: (decoded example, seed (2,) int32) -> example, applied
      after decoding with a seed of the host's seed and the example's draw
      (e.g. LPD's pose-frame augmentation, bilayer_jax.data.pose_augment).

  Returns:
    A tf.data.Dataset of dicts with ``{source,target}_{imgs,segs,poses,
    stickmen}`` NHWC float32 arrays shaped (B, n|T, ...), see
    bilayer_jax.data.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  builder = load_builder(data_dir, dataset_name)
  host_seed = int(np.random.SeedSequence(
      [seed % 2**64, index]).generate_state(1)[0] >> 1)
  ds = _selected_examples(builder, split, index, count, seed, shuffle, repeat,
                          num_source_frames + num_target_frames, host_seed)
  if shuffle:
    ds = ds.shuffle(shuffle_buffer, seed=host_seed,
                    reshuffle_each_iteration=True)
  decode = functools.partial(
      _decode_example, image_size=image_size,
      stored_size=builder.info.features['frames'].shape[1],
      num_source=num_source_frames, thickness=stickmen_thickness,
      landmark_style=landmark_style, with_video_index=with_video_index)
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  if example_transform is not None:
    ds = _transformed(ds, example_transform, host_seed)
  ds = ds.batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _selected_examples(builder, split: str, index: int, count: int, seed: int, shuffle: bool, repeat: bool,
                       num_frames: int, host_seed: int) -> tf.data.Dataset:
  """This host's parsed records with `num_frames` frames selected (still encoded)."""
  ds = _host_records(builder, split, index, count, seed, shuffle, repeat)
  parser = tfds.core.example_parser.ExampleParser(
      builder.info.features.get_serialized_info())
  # Parse only: frames and masks stay encoded until frames are selected.
  ds = ds.map(lambda example_index, record: {**parser.parse_example(record), 'example_index': example_index},
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.enumerate().map(
      lambda i, ex: _select(ex, i, num_samples=num_frames,
                            seed=tf.constant(host_seed % 2**31, tf.int32)),
      num_parallel_calls=tf.data.AUTOTUNE)


def _transformed(ds: tf.data.Dataset, transform, host_seed: int) -> tf.data.Dataset:
  """`transform(example, seed)` with a seed of the host's seed and the example's draw."""
  seed = tf.constant(host_seed % 2**31, tf.int32)
  return ds.enumerate().map(
      lambda i, ex: transform(ex, tf.stack([seed, tf.cast(i % 2**31, tf.int32)])),
      num_parallel_calls=tf.data.AUTOTUNE)


def _decode_example(selected, *, with_video_index: bool, **decode_args):
  out = decode_frames(selected, **decode_args)
  if with_video_index:
    out['video_index'] = tf.cast(selected['example_index'], tf.int32)
  return out


def make_global_batch(local_batch, sharding: jax.sharding.Sharding):
  """Host-local numpy batch -> global jax arrays laid out by ``sharding``.

  Every host passes its own batch of the same shapes; the global batch is
  their concatenation along axis 0 (``sharding`` is typically
  ``NamedSharding(mesh, P('data'))``).
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding,
                                                       np.asarray(x)),
      local_batch)
