"""Few-shot avatars of the FSTH family: K photos -> an embedding (once) -> frames for any landmarks.

    animator = FSTHAnimator.from_params('runs/fsth_demo/params')
    avatar = animator.init_avatar([photo1, photo2])   # detect, crop, sketch, embed; embeddings averaged
    out = animator.render(avatar, poses)               # (T, 136) keypoints -> {'image': (T, S, S, 3)}
    for frame, crop, out in animator.drive(avatar, video_frames): ...

The feed-forward path of the paper (no fine-tuning): the embedder runs once per photo and the mean
embedding drives the generator, which renders each driving frame's landmark sketch
(`bilayer_jax.data.stickman.draw_fsth_sketches`, the reference's drawing). Params written by
`python -m bilayer_jax.finetune` (metadata `finetuned`) render with the person's fine-tuned AdaIN parameters
ψ instead of the embedding (the photos are then only the fallback pose). The whole frame is generated
(background included): `render`'s mask is all ones and `composite` gives the image as it is. Photos are
cropped as the dataset is (`preprocess.FacePreprocessor`), so a model trained on our TFRecords sees the
framing it learned.
"""

import dataclasses
import functools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import errors
from bilayer_jax import model_io
from bilayer_jax.data import stickman
from bilayer_jax.inference import animator
from bilayer_jax.inference import preprocess
from bilayer_jax.models.fsth import networks
from bilayer_jax.models.fsth.config import FSTHConfig

NETWORKS = ('embedder', 'generator')


def network_variables(generator_side: Mapping[str, Any], net: str) -> Dict[str, Any]:
  """One network's variables from a params directory's generator side ({collection: {network: tree}})."""
  return {c: tree[net] for c, tree in generator_side.items() if net in tree}


@dataclasses.dataclass
class FSTHAvatar:
  """An embedded person: the mean embedding of its photos."""
  embedding: jax.Array  # (embedding_dim,)
  sources: List[preprocess.SourceInputs]  # the preprocessed photos
  enhanced: bool = False  # FSTH has no texture enhancer (the field drive and the evaluation report)

  @property
  def source(self) -> preprocess.SourceInputs:
    """The first photo (its pose is `drive`'s fallback before the first detected face)."""
    return self.sources[0]


def _unit(x):
  return (jnp.asarray(x) + 1) / 2


class FSTHAnimator(animator.PoseDriven):
  """Embeds people from a few photos and renders them in any pose (feed-forward, eval mode).

  Args:
    cfg: the architecture. variables: the generator side of a params directory
      (`{'params': {'embedder', 'generator'}, 'spectral': {...}}`).
    preprocessor: detection/crop (FacePreprocessor at the model's size by default). chunk: frames per jit call.
    finetuned: render with the generator's fine-tuned psi (params written by bilayer_jax.finetune).
  """

  def __init__(self, cfg: FSTHConfig, variables: Mapping[str, Any],
               preprocessor: Optional[preprocess.FacePreprocessor] = None, chunk: int = 8, finetuned: bool = False):
    params = variables.get('params', {})
    missing = [n for n in NETWORKS if n not in params]
    if missing:
      raise model_io.ParamsDirError(f'FSTH inference needs the networks {list(NETWORKS)}; missing {missing}')
    self.cfg = cfg
    self.has_enhancer = False
    self.variables = jax.device_put({c: {n: tree[n] for n in NETWORKS if n in tree} for c, tree in variables.items()})
    self.preprocessor = preprocessor or preprocess.FacePreprocessor(cfg.image_size)
    self.chunk = chunk
    self.finetuned = finetuned
    self._embed_fn = jax.jit(functools.partial(self._embed, cfg))
    self._render_fn = jax.jit(functools.partial(self._render, cfg, finetuned))

  @classmethod
  def from_params(cls, params_dir: str, **kwargs) -> 'FSTHAnimator':
    """From a params directory written by an fsth run."""
    cfg, variables, info = model_io.load_params(params_dir)
    kwargs.setdefault('finetuned', bool(info.get('metadata', {}).get('finetuned', False)))
    kwargs.setdefault('preprocessor', preprocess.FacePreprocessor(cfg.image_size,
                                                                  crop_style=animator.crop_style(info)))
    try:
      return cls(cfg, variables['generator'], **kwargs)
    except model_io.ParamsDirError as e:
      raise model_io.ParamsDirError(f'{params_dir}: {e}') from e

  @staticmethod
  def _embed(cfg, variables, frames, sketches):
    e = networks.Embedder(cfg).apply(network_variables(variables, 'embedder'), _unit(frames),
                                     _unit(sketches))
    return e.mean(axis=0)

  @staticmethod
  def _render(cfg, finetuned, variables, embedding, sketches):
    embeddings = jnp.broadcast_to(embedding, (sketches.shape[0],) + embedding.shape)
    out = networks.Generator(cfg).apply(network_variables(variables, 'generator'), _unit(sketches),
                                        embeddings, finetuned=finetuned)
    return out * 2 - 1

  def sketches(self, poses: np.ndarray) -> np.ndarray:
    """(T, 136) keypoints in [-1, 1] -> (T, S, S, 3) landmark sketches in [-1, 1]."""
    return stickman.draw_fsth_sketches(np.asarray(poses, np.float32).reshape(-1, 136), self.cfg.image_size)

  def init_avatar(self, photos: Union[np.ndarray, preprocess.SourceInputs, Sequence[Any]],
                  face_index: Optional[int] = None, enhance: Optional[bool] = None) -> FSTHAvatar:
    """Embeds one photo or several of the same person (uint8 RGB of any size, or SourceInputs).

    Raises:
      preprocess.NoFaceError: a photo without a face (the message names which).
      errors.InvalidArgumentError: enhance=True (FSTH has no texture enhancer).
    """
    if enhance:
      raise errors.InvalidArgumentError('the fsth family has no texture enhancer; use enhance=False')
    if isinstance(photos, (np.ndarray, preprocess.SourceInputs)):
      photos = [photos]
    sources = [p if isinstance(p, preprocess.SourceInputs) else
               self.preprocessor.source(p, name=f'photo {i + 1} of {len(photos)}', face_index=face_index)
               for i, p in enumerate(photos)]
    frames = np.concatenate([s.imgs[0] for s in sources])
    sketches = self.sketches(np.concatenate([s.poses[0] for s in sources]))
    return FSTHAvatar(embedding=self._embed_fn(self.variables, frames, sketches), sources=sources)

  def render(self, avatar: FSTHAvatar, poses: np.ndarray) -> Dict[str, np.ndarray]:
    """(T, 136) keypoints in [-1, 1] -> {'image': (T, S, S, 3) in [-1, 1], 'mask': (T, S, S, 1) ones (the
    whole frame is generated), 'sketch': the generator's input}."""
    sketches = self.sketches(poses)
    t = len(sketches)
    padded = np.concatenate([sketches, np.repeat(sketches[-1:], -t % self.chunk, axis=0)]) if t else sketches
    images = [jax.device_get(self._render_fn(self.variables, avatar.embedding, padded[i:i + self.chunk]))
              for i in range(0, len(padded), self.chunk)]
    image = np.concatenate(images)[:t] if images else np.zeros((0,) + sketches.shape[1:], np.float32)
    return {'image': image, 'mask': np.ones(image.shape[:-1] + (1,), np.float32), 'sketch': sketches}
