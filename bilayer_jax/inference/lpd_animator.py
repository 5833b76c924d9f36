"""Avatars of the LPD family: photos -> an identity vector (once) -> frames for any driver's face crops.

    animator = LPDAnimator.from_params('runs/lpd_demo/params')
    avatar = animator.init_avatar([photo1, photo2])   # detect, crop, identity vectors averaged
    out = animator.render(avatar, driver_crops)        # (T, S, S, 3) crops in [-1, 1] -> image, mask
    for frame, crop, out in animator.drive(avatar, video_frames): ...

The pose is read from the driver's face crop itself by the pose encoder (no landmarks enter the model);
the identity vector is the mean of the identity encoder over the photos (eval mode, the EMA weights a
params directory holds). Params written by `python -m bilayer_jax.finetune` (metadata `finetuned`) render
with the generator's own fine-tuned identity vector instead (the photos then only give the pose before a
driver's first face). The generator renders the person on black with a soft mask, which `composite` puts on
any background. Photos and driver frames are cropped as the dataset is
(`preprocess.FacePreprocessor`), so a model trained on our TFRecords sees the framing it learned.
"""

import dataclasses
import functools
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import errors
from bilayer_jax import model_io
from bilayer_jax.inference import animator
from bilayer_jax.inference import preprocess
from bilayer_jax.models.lpd import networks
from bilayer_jax.models.lpd.config import LPDConfig

NETWORKS = ('embedder', 'generator')


def network_variables(generator_side: Mapping[str, Any], net: str) -> Dict[str, Any]:
  return {c: tree[net] for c, tree in generator_side.items() if net in tree}


@dataclasses.dataclass
class LPDAvatar:
  """A person: the mean identity vector of its photos (fine-tuned params: the generator's own)."""
  identity: jax.Array  # (1, identity_dim)
  sources: List[preprocess.SourceInputs]
  enhanced: bool = False  # LPD has no texture enhancer

  @property
  def source(self) -> preprocess.SourceInputs:
    return self.sources[0]


class LPDAnimator(animator.PoseDriven):
  """Embeds people from photos and renders them with the poses of driver crops (eval mode).

  Args:
    cfg: the architecture. variables: the generator side of a params directory
      (`{'params': {'embedder', 'generator'}, 'batch_stats': ..., 'spectral': ...}`).
    preprocessor: detection/crop (FacePreprocessor at the model's size by default). chunk: frames per jit call.
    finetuned: render with the generator's fine-tuned `identity_embedding` (params written by
      bilayer_jax.finetune).
  """

  def __init__(self, cfg: LPDConfig, variables: Mapping[str, Any],
               preprocessor: Optional[preprocess.FacePreprocessor] = None, chunk: int = 8, finetuned: bool = False):
    params = variables.get('params', {})
    missing = [n for n in NETWORKS if n not in params]
    if missing:
      raise model_io.ParamsDirError(f'LPD inference needs the networks {list(NETWORKS)}; missing {missing}')
    if finetuned and 'identity_embedding' not in params['generator']:
      raise model_io.ParamsDirError('fine-tuned LPD inference needs the generator\'s identity_embedding (params '
                                    'written by bilayer_jax.finetune)')
    self.cfg = cfg
    self.has_enhancer = False
    self.variables = jax.device_put({c: {n: t[n] for n in NETWORKS if n in t} for c, t in variables.items()})
    self.preprocessor = preprocessor or preprocess.FacePreprocessor(cfg.image_size)
    self.chunk = chunk
    self.finetuned = finetuned
    self._identity_fn = jax.jit(functools.partial(self._identity, cfg))
    self._render_fn = jax.jit(functools.partial(self._render, cfg, finetuned))

  @classmethod
  def from_params(cls, params_dir: str, **kwargs) -> 'LPDAnimator':
    """From a params directory written by an lpd run."""
    cfg, variables, info = model_io.load_params(params_dir)
    metadata = info.get('metadata', {})
    kwargs.setdefault('finetuned', bool(metadata.get('finetuned', False)))
    # The training data's crop rule: 'latentpose' crops drivers from the face detector's box alone.
    kwargs.setdefault('preprocessor', preprocess.FacePreprocessor(cfg.image_size, crop_style=animator.crop_style(info)))
    try:
      return cls(cfg, variables['generator'], **kwargs)
    except model_io.ParamsDirError as e:
      raise model_io.ParamsDirError(f'{params_dir}: {e}') from e

  @staticmethod
  def _identity(cfg, variables, frames):
    embedder = networks.Embedder(cfg)
    _, mean = embedder.apply(network_variables(variables, 'embedder'), (frames[None] + 1) / 2,
                             method=embedder.identity)
    return mean

  @staticmethod
  def _render(cfg, finetuned, variables, identity, crops):
    embedder = networks.Embedder(cfg)
    pose = embedder.apply(network_variables(variables, 'embedder'), (crops + 1) / 2, method=embedder.pose)
    # Fine-tuned: the generator broadcasts its own identity vector.
    identity = None if finetuned else jnp.broadcast_to(identity, (crops.shape[0], identity.shape[-1]))
    fake, mask = networks.Generator(cfg, finetuned).apply(network_variables(variables, 'generator'), identity,
                                                          pose)
    return fake * 2 - 1, mask

  def init_avatar(self, photos: Union[np.ndarray, preprocess.SourceInputs, Sequence[Any]],
                  face_index: Optional[int] = None, enhance: Optional[bool] = None) -> LPDAvatar:
    """The mean identity vector of one photo or several of the same person (uint8 RGB or SourceInputs);
    fine-tuned params: the generator's own (the photos only give the fallback pose).

    Raises:
      preprocess.NoFaceError: a photo without a face (the message names which).
      errors.InvalidArgumentError: enhance=True (LPD has no texture enhancer).
    """
    if enhance:
      raise errors.InvalidArgumentError('the lpd family has no texture enhancer; use enhance=False')
    if isinstance(photos, (np.ndarray, preprocess.SourceInputs)):
      photos = [photos]
    sources = [p if isinstance(p, preprocess.SourceInputs) else
               self.preprocessor.source(p, name=f'photo {i + 1} of {len(photos)}', face_index=face_index)
               for i, p in enumerate(photos)]
    if self.finetuned:
      return LPDAvatar(identity=self.variables['params']['generator']['identity_embedding'], sources=sources)
    frames = np.concatenate([s.imgs[0] for s in sources])
    return LPDAvatar(identity=self._identity_fn(self.variables, frames), sources=sources)

  def render(self, avatar: LPDAvatar, crops: np.ndarray) -> Dict[str, np.ndarray]:
    """(T, S, S, 3) driver face crops in [-1, 1] -> {'image': (T, S, S, 3) person on black in [-1, 1],
    'mask': (T, S, S, 1)}."""
    crops = np.asarray(crops, np.float32)
    t = len(crops)
    if not t:
      size = self.cfg.image_size
      return {'image': np.zeros((0, size, size, 3), np.float32), 'mask': np.zeros((0, size, size, 1), np.float32)}
    padded = np.concatenate([crops, np.repeat(crops[-1:], -t % self.chunk, axis=0)])
    outs = [jax.device_get(self._render_fn(self.variables, avatar.identity, padded[i:i + self.chunk]))
            for i in range(0, len(padded), self.chunk)]
    return {'image': np.concatenate([o[0] for o in outs])[:t], 'mask': np.concatenate([o[1] for o in outs])[:t]}

  @staticmethod
  def _source_pose(avatar: LPDAvatar) -> np.ndarray:
    """The first photo's crop: the pose before a driver's first face."""
    return avatar.source.imgs[0, 0]

  @staticmethod
  def dataset_poses(frames: Mapping[str, np.ndarray]) -> np.ndarray:
    """The dataset's target crops themselves (T, S, S, 3) in [-1, 1]: the pose encoder reads the pose."""
    return frames['target_imgs']

  def _driver_inputs(self, frames: Iterable[np.ndarray], coverage: Optional[preprocess.FaceCoverage]):
    """(frame, its face crop in [-1, 1] as the pose, the uint8 crop) per driving frame (crop style
    'latentpose': the face detector alone, no landmarks)."""
    for frame, crop in self.preprocessor.driver_crops(frames, coverage):
      yield frame, None if crop is None else crop.astype(np.float32) / 255 * 2 - 1, crop
