"""The evaluation protocol: one-shot self-reenactment (and cross-identity reenactment) on a held-out split.

Videos: the split's records (data_prep TFRecords) in a fixed order (sorted file names, record order); a video
split into several chunks is evaluated once, from its first chunk (chunks each span the whole video). With
`max_videos` > 0 only the first videos of that order are used. Splits built by data_prep are identity-disjoint
(VoxCeleb2's dev/test, or identities hashed into `test`); the built-in demo's `test` split is frame-disjoint
from `train` for the same two people (its person-disjoint split is `unseen`).

Frames (fixed, so results compare across runs): the source is frame `source_frame` of the video (K-shot
models, `num_source_frames` K > 1: plus K - 1 frames spread evenly over the others); the targets are the
other frames, or `max_targets` of them spread evenly (np.linspace over the remaining indices, rounded).
All frames are decoded and normalised exactly as the training input pipeline does (`decode_frames`).
With an `adapt` function (FSTH fine-tuning: `bilayer_jax.evaluate`), each video's animator is the one it
returns for the video's source frames (FT); otherwise the given animator (feed-forward, FF).

Self-reenactment: the avatar is initialised once from the source (identity embedder, texture generator,
projectors, and the texture enhancer when the params have one, `enhance`), then every target is rendered from
its OWN keypoints and compared with the real frame (image metrics, CSIM with the target's alignment, NME).
Cross-identity: video i's avatar is driven by the target frames of the next video (in the fixed order) of a
different person; no ground truth exists, so only CSIM to the source and NME to the driving frame are measured.

FID (if selected) compares the set of all generated self-reenactment frames with the set of their real frames.

Pose/identity errors (`pose_identity` = an identity embedder, 'dlib' or 'arcface'; evaluators.pose_identity,
the LPD paper's disentanglement metric) over the same renders, pooled per person: identity error of every
cross-identity frame against the mean descriptor of its person's real frames (sources and targets), pose error
of every self-reenactment frame against the frame it reproduces (dlib landmarks). One process only: the
identity references pool frames across videos.

Baselines in the same run (image metrics only): `source_copy` predicts every target as the source frame;
`mean_image` predicts the per-pixel mean of the video's targets (a static oracle). A model that animates should
beat both. Multi-host: host k evaluates videos k, k + count, ...; per-frame values are gathered to every host.
"""

import dataclasses
import functools
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from bilayer_jax import errors
from bilayer_jax.data import input_pipeline
from bilayer_jax.evaluators import fid as fid_lib
from bilayer_jax.evaluators import metrics as metrics_lib
from bilayer_jax.inference import preprocess
from bilayer_jax.models.bilayer import apply_mask


@dataclasses.dataclass(frozen=True)
class Settings:
  """The protocol's choices (recorded in the results)."""
  source_frame: int = 0
  max_targets: int = 32
  max_videos: int = 0
  cross_identity: bool = True
  mask: str = 'ground_truth'
  enhance: Optional[bool] = None  # None: when the params have a texture enhancer
  grid_rows: int = 4
  num_source_frames: int = 1  # K-shot models (fsth): the avatar is initialised from K frames
  pose_identity: str = ''  # identity embedder of the LPD paper's pose/identity errors ('' = off; see below)


@dataclasses.dataclass(frozen=True)
class Video:
  person_id: str
  video_id: str
  file: str
  offset: int  # record index within `file`
  num_frames: int


def list_videos(data_dir: str, split: str, dataset_name: str) -> List[Video]:
  """The split's videos in the protocol's fixed order (first chunk of each video)."""
  builder = input_pipeline.load_builder(data_dir, dataset_name)
  if split not in builder.info.splits:
    raise errors.InvalidArgumentError(f'{dataset_name} in {data_dir} has no split {split!r} (it has '
                                      f'{sorted(builder.info.splits)}); set data.eval_split')
  files = sorted(os.path.join(builder.data_dir, f) for f in builder.info.splits[split].filenames)
  spec = {'person_id': tf.io.FixedLenFeature([], tf.string), 'video_id': tf.io.FixedLenFeature([], tf.string),
          'keypoints': tf.io.VarLenFeature(tf.float32)}
  videos, seen = [], set()
  for path in files:
    for offset, raw in enumerate(tf.data.TFRecordDataset(path)):
      ex = tf.io.parse_single_example(raw, spec)
      person, video = ex['person_id'].numpy().decode(), ex['video_id'].numpy().decode()
      if (person, video) not in seen:
        seen.add((person, video))
        videos.append(Video(person, video, path, offset, int(ex['keypoints'].values.shape[0]) // 136))
  return videos


def select_frames(num_frames: int, source_frame: int, max_targets: int, num_sources: int = 1) -> List[int]:
  """[source indices..., target indices...] by the protocol's rule (see module docstring): `source_frame`
  and, for K-shot models, K - 1 more sources spread evenly over the rest of the video."""
  if not 0 <= source_frame < num_frames:
    raise errors.InvalidArgumentError(f'source_frame {source_frame} is outside a video of {num_frames} frames')
  if num_sources < 1 or (num_sources > 1 and num_sources >= num_frames):
    raise errors.InvalidArgumentError(f'{num_sources} source frames leave no target in a video of {num_frames} '
                                      'frames')
  others = [i for i in range(num_frames) if i != source_frame]
  extra = [others[i] for i in _spread(len(others), num_sources - 1)] if num_sources > 1 else []
  sources = [source_frame] + extra
  others = [i for i in others if i not in extra]
  if max_targets and len(others) > max_targets:
    others = [others[i] for i in _spread(len(others), max_targets)]
  return sources + others


def _spread(length: int, count: int) -> List[int]:
  """`count` distinct indices spread evenly over range(length)."""
  return list(np.unique(np.round(np.linspace(0, length - 1, count)).astype(int)))


class FrameLoader:
  """Decodes chosen frames of a video exactly as the training pipeline does."""

  def __init__(self, data_dir: str, dataset_name: str, image_size: int):
    builder = input_pipeline.load_builder(data_dir, dataset_name)
    from tensorflow_datasets.core import example_parser  # pylint: disable=g-import-not-at-top
    self._parse = example_parser.ExampleParser(builder.info.features.get_serialized_info()).parse_example
    self._stored_size = builder.info.features['frames'].shape[1]
    self.image_size = image_size

  def __call__(self, video: Video, indices: Sequence[int], num_sources: int = 1) -> Dict[str, np.ndarray]:
    raw = next(iter(tf.data.TFRecordDataset(video.file).skip(video.offset).take(1)))
    ex = self._parse(raw)
    idx = tf.constant(list(indices), tf.int32)
    selected = {k: tf.gather(ex[k], idx) for k in ('frames', 'segs', 'keypoints')}
    out = input_pipeline.decode_frames(selected, image_size=self.image_size, stored_size=self._stored_size,
                                       num_source=num_sources, thickness=2)
    return {k: v.numpy() for k, v in out.items()}


def source_inputs(frames: Dict[str, np.ndarray], index: int = 0) -> preprocess.SourceInputs:
  """Source frame `index` of loaded frames as the animators take a preprocessed photo."""
  imgs = frames['source_imgs'][index:index + 1]
  size = imgs.shape[1]
  return preprocess.SourceInputs(
      imgs=imgs[None], segs=frames['source_segs'][index:index + 1][None],
      stickmen=frames['source_stickmen'][index:index + 1][None],
      poses=frames['source_poses'][index:index + 1][None], crop=np.round((imgs[0] + 1) * 127.5).astype(np.uint8),
      landmarks=pixel_keypoints(frames['source_poses'][index:index + 1], size)[0])


def all_source_inputs(frames: Dict[str, np.ndarray]) -> List[preprocess.SourceInputs]:
  return [source_inputs(frames, i) for i in range(len(frames['source_imgs']))]


def pixel_keypoints(poses: np.ndarray, size: int) -> np.ndarray:
  """(N, 136) in [-1, 1] -> (N, 68, 2) pixel coordinates of an S x S image."""
  return (np.asarray(poses, np.float32).reshape(-1, 68, 2) + 1) / 2 * size


def _masked(images, masks):
  return images if masks is None else apply_mask(images, masks)


def _baselines(frames, mask_mode, image_fn) -> Dict[str, Dict[str, np.ndarray]]:
  targets, segs = frames['target_imgs'], frames['target_segs']
  masks = metrics_lib.select_masks(mask_mode, segs, segs)  # no prediction: 'predicted' uses the true mask
  real = _masked(targets, masks)
  guesses = {'source_copy': np.broadcast_to(frames['source_imgs'][:1], targets.shape),
             'mean_image': np.broadcast_to(targets.mean(0, keepdims=True), targets.shape)}
  return {name: {k: np.asarray(v, np.float64) for k, v in image_fn(_masked(g, masks), real).items()}
          for name, g in guesses.items()}


def _cross_driver(videos: Sequence[Video], i: int) -> Optional[int]:
  for step in range(1, len(videos)):
    j = (i + step) % len(videos)
    if videos[j].person_id != videos[i].person_id:
      return j
  return None


def evaluate(animator, evaluator: metrics_lib.FrameEvaluator, data_dir: str, split: str, dataset_name: str,
             settings: Settings, progress: bool = True, adapt=None) -> Dict[str, Any]:
  """Runs the protocol with an inference animator and returns the results (identical on every host).

  `adapt`: optional (source inputs of a video, video index) -> the animator to evaluate that video with.
  """
  import jax  # pylint: disable=g-import-not-at-top
  videos = list_videos(data_dir, split, dataset_name)
  if settings.max_videos:
    videos = videos[:settings.max_videos]
  if not videos:
    raise errors.InvalidArgumentError(f'{dataset_name} split {split!r} in {data_dir} has no videos')
  size = animator.cfg.image_size
  loader = FrameLoader(data_dir, dataset_name, size)
  image_names = [n for n in evaluator.names if n in metrics_lib.DEVICE_METRICS] or ['psnr']
  baseline_fn = functools.partial(jax.jit(metrics_lib.image_metrics_fn(image_names, evaluator.lpips)),
                                  evaluator.lpips.variables if evaluator.lpips else None)
  mine = list(range(jax.process_index(), len(videos), jax.process_count()))
  self_rows, base_rows, cross_rows, grid = [], {'source_copy': [], 'mean_image': []}, [], []
  features = {'real': [], 'fake': []}
  pooled = _PosePool()
  for i in tqdm(mine, desc='evaluating videos', disable=not progress or jax.process_index() != 0):
    video = videos[i]
    k = settings.num_source_frames
    frames = loader(video, select_frames(video.num_frames, settings.source_frame, settings.max_targets, k), k)
    sources = all_source_inputs(frames)
    video_animator = adapt(sources, i) if adapt else animator
    avatar = video_animator.init_avatar(sources if k > 1 else sources[0], enhance=settings.enhance)
    out = video_animator.render(avatar, video_animator.dataset_poses(frames))
    masks = metrics_lib.select_masks(settings.mask, frames['target_segs'], out['mask'])
    pred, real = _masked(out['image'], masks), _masked(frames['target_imgs'], masks)
    values = evaluator.self_reenactment(pred, real, pixel_keypoints(frames['target_poses'], size))
    self_rows.append({'video': np.full(len(pred), i, np.float64), **values})
    if evaluator.inception:
      features['real'].append(evaluator.inception(real))
      features['fake'].append(evaluator.inception(pred))
    for name, vals in _baselines(frames, settings.mask, baseline_fn).items():
      base_rows[name].append({'video': np.full(len(pred), i, np.float64), **vals})
    if len(grid) < settings.grid_rows:
      grid.append(np.concatenate([frames['source_imgs'][0], real[0], pred[0]], axis=1))
    pooled.add_self(video.person_id, pred, real, _masked(frames['source_imgs'], metrics_lib.select_masks(
        settings.mask, frames['source_segs'], frames['source_segs'])))
    j = _cross_driver(videos, i) if settings.cross_identity else None
    if j is not None and (evaluator.cross_keys or settings.pose_identity):
      row, cross_pred = _cross_row(video_animator, avatar, evaluator, settings, frames, i,
                                   loader(videos[j], select_frames(videos[j].num_frames, settings.source_frame,
                                                                   settings.max_targets)))
      cross_rows.append(row)
      pooled.add_cross(video.person_id, videos[j].person_id, cross_pred)
  results = {'protocol': {**dataclasses.asdict(settings), 'split': split, 'dataset': dataset_name,
                          'data_dir': data_dir, 'num_videos': len(videos), 'image_size': size},
             'self_reenactment': _collect(self_rows, evaluator.self_keys, videos),
             'baselines': {k: _collect(v, tuple(image_names), videos)['summary'] for k, v in base_rows.items()}}
  _add_fid_and_cross(results, evaluator, settings, features, cross_rows, videos)
  results['pose_identity'] = pooled.errors(settings.pose_identity, evaluator.embedders.get(settings.pose_identity))
  results['grid'] = np.concatenate(grid, axis=0) if grid else None
  return results


class _PosePool:
  """The renders the pose/identity errors need, pooled per person (this process's videos)."""

  def __init__(self):
    self.self_pairs, self.drivers, self.identity_images, self.cross_pairs = {}, {}, {}, {}

  @staticmethod
  def _append(store: dict, key, frames: np.ndarray) -> None:
    store[key] = np.concatenate([store[key], frames]) if key in store else np.asarray(frames)

  def add_self(self, person: str, pred: np.ndarray, real: np.ndarray, sources: np.ndarray) -> None:
    self._append(self.self_pairs, (person, person), pred)
    self._append(self.drivers, person, real)
    self._append(self.identity_images, person, np.concatenate([sources, real]))

  def add_cross(self, person: str, driver_person: str, pred: np.ndarray) -> None:
    self._append(self.cross_pairs, (person, driver_person), pred)

  def errors(self, embedder: str, instance=None) -> Dict[str, Any]:
    """The pose/identity section of the results, or why it was skipped. `instance`: the evaluator's own
    embedder of that name, when it has one (no second copy of its weights)."""
    import jax  # pylint: disable=g-import-not-at-top
    from bilayer_jax.evaluators import pose_identity  # pylint: disable=g-import-not-at-top
    if not embedder:
      return {'skipped': 'disabled (eval.pose_identity is empty)'}
    if jax.process_count() > 1:
      return {'skipped': 'needs one process (identity references pool frames across videos)'}
    metric = pose_identity.PoseIdentityError(identity_embedder=instance or embedder, landmark_backend='dlib')
    skipped = '' if self.cross_pairs else 'needs at least two identities in the split'
    if self.cross_pairs:
      try:
        out = metric.evaluate({**self.self_pairs, **self.cross_pairs}, self.identity_images, self.drivers)
      except pose_identity.NoFaceError as e:  # e.g. an untrained model: no face on any cross render
        skipped = str(e)
    if skipped:
      out = metric.evaluate(self.self_pairs, self.identity_images, self.drivers)
      out['identity_error_skipped'] = skipped
    out['people'] = len(self.drivers)
    return out


def _cross_row(animator, avatar, evaluator, settings: Settings, frames, index: int, driver
               ) -> Tuple[Dict[str, Any], np.ndarray]:
  """Cross-identity metrics of video `index`'s avatar driven by another identity's frames, and the renders."""
  size = animator.cfg.image_size
  gt = lambda imgs, segs: _masked(imgs, metrics_lib.select_masks(settings.mask, segs, segs))
  cross = animator.render(avatar, animator.dataset_poses(driver))
  cross_pred = _masked(cross['image'], metrics_lib.select_masks(settings.mask, cross['mask'], cross['mask']))
  return {'video': np.full(len(cross_pred), index, np.float64), **evaluator.cross_reenactment(
      cross_pred, pixel_keypoints(driver['target_poses'], size),
      gt(frames['source_imgs'], frames['source_segs'])[0], pixel_keypoints(frames['source_poses'], size)[0],
      gt(driver['target_imgs'], driver['target_segs']))}, cross_pred


def _add_fid_and_cross(results, evaluator, settings: Settings, features, cross_rows, videos) -> None:
  """FID over every host's frames, and the cross-identity section (or why it was skipped)."""
  if evaluator.inception:
    real, fake = (gather_rows(np.concatenate(features[k]) if features[k] else np.zeros((0, fid_lib.FEATURES)))
                  for k in ('real', 'fake'))
    results['self_reenactment']['summary'].update(fid=fid_lib.fid(real, fake), fid_frames=len(fake))
  if not settings.cross_identity:
    results['cross_reenactment'] = {'skipped': 'disabled (cross_identity=False)'}
  elif not evaluator.cross_keys:
    results['cross_reenactment'] = {'skipped': 'no identity or keypoint metric selected'}
  else:
    cross = _collect(cross_rows, evaluator.cross_keys, videos)
    if not cross['summary'].get('frames'):
      cross = {'skipped': 'needs at least two identities in the split'}
    results['cross_reenactment'] = cross


def gather_rows(local: np.ndarray) -> np.ndarray:
  """(n, K) rows of this host -> the rows of every host, in host order (float32 precision on several hosts).

  Hosts hold different numbers of rows: counts are gathered first, then rows padded to the largest.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return local
  counts = np.asarray(multihost_utils.process_allgather(np.array([len(local)], np.int32))).reshape(-1)
  padded = np.zeros((int(counts.max()), local.shape[1]), np.float32)
  padded[:len(local)] = local
  gathered = np.asarray(multihost_utils.process_allgather(padded), np.float64)
  return np.concatenate([gathered[p, :counts[p]] for p in range(len(counts))])


def gather_columns(rows: List[Dict[str, np.ndarray]], keys: Sequence[str]) -> Dict[str, np.ndarray]:
  """This host's per-frame rows (dicts of (n,) columns) -> {key: values of every host}."""
  local = (np.stack([np.concatenate([np.asarray(r[k], np.float64).reshape(-1) for r in rows]) for k in keys], 1)
           if rows else np.zeros((0, len(keys))))
  table = gather_rows(local)
  return {k: table[:, i] for i, k in enumerate(keys)}


def _collect(rows: List[Dict[str, np.ndarray]], keys: Sequence[str], videos: Sequence[Video]) -> Dict[str, Any]:
  """Per-frame rows of this host -> gathered summary over all frames and per-video means."""
  table = gather_columns(rows, ('video',) + tuple(keys))
  if not table['video'].size:
    return {'summary': {'frames': 0}, 'videos': []}
  metrics = {k: v for k, v in table.items() if k != 'video'}
  per_video = []
  for index in sorted(set(table['video'].astype(int).tolist())):
    sel = table['video'] == index
    entry = metrics_lib.summarise({k: [v[sel]] for k, v in metrics.items()})
    per_video.append({'person_id': videos[index].person_id, 'video_id': videos[index].video_id, **entry})
  return {'summary': metrics_lib.summarise({k: [v] for k, v in metrics.items()}), 'videos': per_video}
