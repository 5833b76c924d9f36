"""One-shot avatar inference: one photo -> an avatar (once) -> any number of rendered poses (per frame).

    animator = Animator.from_params('runs/demo/enhancer/params')
    avatar = animator.init_avatar(photo)              # detect, crop, mask, identity + texture (+ enhancer)
    avatar = animator.init_avatar(photo, face_index=1)  # another face: avatar.source.faces lists them
    out = animator.render(avatar, poses)              # (T, 136) keypoints -> images, masks, layers
    frames = animator.composite(out, background=(255, 255, 255))
    for frame, out in animator.drive(avatar, video_frames): ...   # detect + crop + render driving frames

The per-frame function is jit-compiled once per chunk size (poses are padded to `chunk` frames), so a
video of any length reuses one executable; detection and avatar initialisation never run per frame.
The photo's largest face is animated unless `face_index` / `face_box` choose another (see
`preprocess.select_face`); `drive` can check that the driving frames have faces (`preprocess.FaceCoverage`).
Runs on whatever JAX backend is installed (CPU, GPU, TPU).
"""

import dataclasses
import functools
import time
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import errors
from bilayer_jax import model_io
from bilayer_jax.convert import original
from bilayer_jax.inference import folding
from bilayer_jax.inference import preprocess
from bilayer_jax.models.bilayer import BilayerGenerator
from bilayer_jax.models.config import BASE_NETWORKS, BilayerConfig


@dataclasses.dataclass
class Avatar:
  """An initialised avatar: the per-frame network's inputs that depend only on the source photo."""
  texture: jax.Array  # (1, S, S, 3) high-frequency texture (enhanced if `enhanced`)
  adaptive: Any  # the inference projector's outputs (per-identity AdaBN and skip-conv parameters)
  source: Optional[preprocess.SourceInputs]  # the preprocessed photo (None if given model-ready inputs)
  enhanced: bool
  frame_arrays: Optional[Dict[str, jax.Array]] = None  # the folded per-frame network (folding.fold_arrays)

  def as_dict(self) -> Dict[str, Any]:
    return {'texture': self.texture, 'adaptive': self.adaptive}


def crop_style(info: Mapping[str, Any]) -> str:
  """The crop rule of the data a params directory was trained on (`model_io.load_params`' info; params from
  before the rule was recorded, or imported, are 'original')."""
  return info.get('metadata', {}).get('crop_style', 'original')


class PoseDriven:
  """What every family's animator shares: `composite` and `drive` on top of its own `render(avatar, poses)`,
  `preprocessor` and `chunk` (and `avatar.source.poses`, the fallback pose)."""

  @staticmethod
  def composite(out: Mapping[str, np.ndarray], background: Union[Sequence[int], np.ndarray] = (255, 255, 255)
                ) -> np.ndarray:
    """Rendered outputs -> uint8 RGB frames composited onto a colour or a (H, W, 3) uint8 image."""
    rgb = (np.clip(out['image'], -1, 1) + 1) / 2
    mask = out.get('mask', np.ones(rgb.shape[:-1] + (1,), np.float32))
    size = rgb.shape[1]
    bg = np.asarray(background, np.float32)
    if bg.ndim == 3:
      bg = preprocess.images.resize_bicubic(np.asarray(background, np.uint8), size).astype(np.float32)
    bg = np.broadcast_to(bg / 255, rgb.shape[1:])
    return np.round((rgb * mask + bg * (1 - mask)) * 255).astype(np.uint8)

  @staticmethod
  def _source_pose(avatar) -> Optional[np.ndarray]:
    """What `render` takes as the pose of the first photo (the fallback before a driver's first face)."""
    return avatar.source.poses.reshape(-1) if avatar.source is not None else None

  def _driver_inputs(self, frames: Iterable[np.ndarray], coverage: Optional[preprocess.FaceCoverage]):
    """Yields (frame, what `render` takes as its pose or None, crop or None) per driving frame."""
    return self.preprocessor.driver_poses(frames, coverage)

  @staticmethod
  def dataset_poses(frames: Mapping[str, np.ndarray]) -> np.ndarray:
    """What `render` takes as the poses of a dataset's decoded target frames (the evaluation protocol's
    `FrameLoader` output): their (T, 136) keypoints."""
    return frames['target_poses']

  def drive(self, avatar: Avatar, frames: Iterable[np.ndarray], timings: Optional[Dict[str, float]] = None,
            coverage: Optional[preprocess.FaceCoverage] = None
            ) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray], Dict[str, np.ndarray]]]:
    """Renders the avatar with the poses of driving frames (detected and cropped per frame).

    Yields (frame, driver crop or None, rendered outputs of this frame). Frames without a face reuse the
    last detected pose (before the first face: the source photo's pose). Frames are rendered in chunks
    of `chunk`; `timings` (if given) accumulates seconds under 'detect' and 'render'. With `coverage`,
    the frames with a face are counted and too few raise preprocess.DriverFaceError.
    """
    timings = {} if timings is None else timings
    timings.setdefault('detect', 0.0)
    timings.setdefault('render', 0.0)
    last_pose = self._source_pose(avatar)
    pending = []

    def flush():
      start = time.perf_counter()
      out = self.render(avatar, np.stack([p for _, _, p in pending]))
      timings['render'] += time.perf_counter() - start
      for i, (frame, crop, _) in enumerate(pending):
        yield frame, crop, {k: v[i] for k, v in out.items()}
      pending.clear()

    detections = self._driver_inputs(frames, coverage)
    while True:
      start = time.perf_counter()
      item = next(detections, None)
      timings['detect'] += time.perf_counter() - start
      if item is None:
        break
      frame, pose, crop = item
      if pose is None and last_pose is None:
        raise preprocess.NoFaceError('no face in the first driving frames and no source pose to fall back on')
      last_pose = pose if pose is not None else last_pose
      pending.append((frame, crop, last_pose))
      if len(pending) == self.chunk:
        yield from flush()
    if pending:
      yield from flush()


class Animator(PoseDriven):
  """Initialises avatars from photos and renders them in any pose.

  Args:
    cfg: the architecture. variables: the generator's variables (`{'params', 'batch_stats', 'spectral'}`
      with a subtree per network); the four base networks are required, the texture enhancer optional.
    preprocessor: detection/crop/mask; by default a FacePreprocessor with the 'auto' landmark backend.
    chunk: frames per jit call of `render` (a multiple of the poses is padded).
    folded: render with the avatar's folded static network (`folding`; faster than the unfolded graph,
      docs/benchmarks.md#folded-rendering, same outputs to float tolerance) instead of the training graph.
  """

  def __init__(self, cfg: BilayerConfig, variables: Mapping[str, Any],
               preprocessor: Optional[preprocess.FacePreprocessor] = None, chunk: int = 8, folded: bool = True):
    params = variables.get('params', {})
    missing = [n for n in BASE_NETWORKS if n not in params]
    if missing:
      raise model_io.ParamsDirError(f'inference needs the networks {list(BASE_NETWORKS)}; missing {missing}')
    self.has_enhancer = 'texture_enhancer' in params
    expected = original.abstract_variables(cfg, with_enhancer=self.has_enhancer)['generator']
    for collection, tree in expected.items():
      for net, value in tree.items():
        model_io.check_shapes(value, variables.get(collection, {}).get(net), f'generator/{collection}/{net}')
    self.cfg = cfg
    self.variables = {c: {n: v for n, v in tree.items() if n in expected.get(c, {})}
                      for c, tree in variables.items()}
    self.variables = jax.device_put(self.variables)
    self.preprocessor = preprocessor or preprocess.FacePreprocessor(cfg.image_size)
    self.chunk = chunk
    self.folded = folded
    self.generator = BilayerGenerator(cfg, with_enhancer=self.has_enhancer)
    self._init_fn = jax.jit(functools.partial(self.generator.apply, method=BilayerGenerator.init_avatar),
                            static_argnames='enhance')
    self._render_fn = jax.jit(lambda v, avatar, poses: self.generator.apply(
        v, avatar, poses[None], method=BilayerGenerator.render))
    spec = folding.frame_net_spec(cfg)
    self._fold_fn = jax.jit(lambda v, texture, adaptive: folding.fold_arrays(cfg, v, texture, adaptive))
    self._folded_render_fn = jax.jit(lambda arrays, poses: folding.frame_forward(spec, arrays, poses))

  @classmethod
  def from_params(cls, params_dir: str, **kwargs) -> 'Animator':
    """From a bilayer_jax params directory (trained here, or imported with import_original)."""
    cfg, variables, info = model_io.load_params(params_dir)
    kwargs.setdefault('preprocessor', preprocess.FacePreprocessor(cfg.image_size, crop_style=crop_style(info)))
    try:
      return cls(cfg, variables['generator'], **kwargs)
    except model_io.ParamsDirError as e:
      raise model_io.ParamsDirError(f'{params_dir}: {e}') from e

  # --- per avatar -------------------------------------------------------------------------------
  def init_avatar(self, photo: Union[np.ndarray, preprocess.SourceInputs], enhance: Optional[bool] = None,
                  face_index: Optional[int] = None, face_box: Optional[preprocess.FaceBox] = None) -> Avatar:
    """Preprocesses the photo (uint8 RGB, any size) and initialises the avatar.

    Args:
      photo: the source photo, or already preprocessed `SourceInputs`.
      enhance: run the texture enhancer (default: whenever the params have one).
      face_index, face_box: which face of the photo (default: the largest; `FacePreprocessor.source`).

    Raises:
      preprocess.NoFaceError: no face in the photo. preprocess.FaceSelectionError: face_index/face_box name
      no face. ValueError: enhance=True without an enhancer, or a face choice with `SourceInputs`.
    """
    enhance = self.has_enhancer if enhance is None else enhance
    if enhance and not self.has_enhancer:
      raise errors.InvalidArgumentError('these params have no texture_enhancer; use enhance=False')
    if isinstance(photo, preprocess.SourceInputs):
      if face_index is not None or face_box is not None:
        raise ValueError('face_index/face_box choose a face of a photo; these SourceInputs are already cropped')
      source = photo
    else:
      source = self.preprocessor.source(photo, face_index=face_index, face_box=face_box)
    out = self._init_fn(self.variables, jnp.asarray(source.imgs), jnp.asarray(source.segs),
                        jnp.asarray(source.stickmen), jnp.asarray(source.poses), enhance=enhance)
    avatar = Avatar(texture=out['texture'], adaptive=out['adaptive'], source=source, enhanced=enhance)
    if self.folded:
      adaptive = [tuple(a[0] for a in pair) for pair in out['adaptive']]
      avatar.frame_arrays = self._fold_fn(self.variables, out['texture'][0], adaptive)
    return avatar

  def fold(self, avatar: Avatar) -> folding.FoldedFrameNet:
    """The avatar's static per-frame network (for TFLite/PyTorch export)."""
    return folding.fold_avatar(self.cfg, self.variables, avatar.as_dict())

  # --- per frame --------------------------------------------------------------------------------
  def render(self, avatar: Avatar, poses: np.ndarray) -> Dict[str, np.ndarray]:
    """Renders (T, 136) keypoints in [-1, 1] -> numpy {'image': (T, S, S, 3) in [-1, 1] (lf + hf, not
    masked), 'mask': (T, S, S, 1) in [0, 1], 'lf', 'hf': the two layers, 'uv': the warp grid}."""
    poses = np.asarray(poses, np.float32).reshape(-1, self.cfg.pse_in_channels)
    t = len(poses)
    padded = np.concatenate([poses, np.repeat(poses[-1:], -t % self.chunk, axis=0)]) if t else poses
    outs = []
    for start in range(0, len(padded), self.chunk):
      chunk = jnp.asarray(padded[start:start + self.chunk])
      if avatar.frame_arrays is not None:
        outs.append(jax.device_get(self._folded_render_fn(avatar.frame_arrays, chunk)))
      else:
        out = jax.device_get(self._render_fn(self.variables, avatar.as_dict(), chunk))
        names = {'imgs': 'image', 'segs': 'mask', 'lf_rgbs': 'lf', 'hf_rgbs': 'hf', 'uvs': 'uv'}
        outs.append({new: out[old][0] for old, new in names.items() if old in out})
    return {k: np.concatenate([o[k] for o in outs])[:t] for k in (outs[0] if outs else {})}
