"""TFLite export of one FSTH person's per-frame generator (landmark sketch -> image), for phones.

The person's AdaIN parameters are baked in: ψ = P ê of the photos' mean embedding, or the fine-tuned ψ of
params written by `bilayer_jax.finetune`; what is left per frame is the generator's convolutions on the
sketch. Input: (batch, S, S, 3) landmark sketches in [-1, 1] as the reference draws them
(`bilayer_jax.data.stickman.draw_fsth_sketches`: white paper, coloured 68-point polylines); output: the
(batch, S, S, 3) image in [-1, 1]. Written with the bi-layer exporter's converter (jax2tf, builtin ops
only) and a .json contract next to it.
"""

import os
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.inference import fsth_animator
from bilayer_jax.inference import tflite_export
from bilayer_jax.models.fsth import networks

QUANTIZATIONS = ('none', 'fp16', 'dynamic', 'int8')


def frame_function(animator: fsth_animator.FSTHAnimator, avatar: fsth_animator.FSTHAvatar):
  """sketches (B, S, S, 3) in [-1, 1] -> images in [-1, 1], the person baked in (a pure JAX function)."""
  cfg = animator.cfg
  variables = jax.device_get(fsth_animator.network_variables(animator.variables, 'generator'))
  params = dict(variables['params'])
  if not animator.finetuned:
    params['psi'] = np.asarray(params['projection'] @ np.asarray(avatar.embedding))
  baked = {**variables, 'params': params}

  def forward(sketches):
    out = networks.Generator(cfg).apply(baked, (sketches + 1) / 2, finetuned=True)
    return (out * 2 - 1,)
  return forward


def export_tflite(animator: fsth_animator.FSTHAnimator, avatar: fsth_animator.FSTHAvatar, path: os.PathLike,
                  quantize: str = 'none', batch: int = 1,
                  representative_sketches: Optional[np.ndarray] = None) -> pathlib.Path:
  """Writes the person's per-frame generator as .tflite + .json contract (see the module docstring).

  Raises:
    tflite_export.ExportError: int8 without representative sketches, or an unknown quantisation.
  """
  s = animator.cfg.image_size
  model = tflite_export.convert_image_function(frame_function(animator, avatar), 'sketches', batch, s, quantize,
                                               representative_sketches)
  contract = {
      'model': 'bilayer_jax FSTH per-frame generator (baked person)', 'quantize': quantize,
      'inputs': [{'name': 'sketches', 'shape': [batch, s, s, 3], 'dtype': 'float32', 'range': '[-1, 1]',
                  'meaning': 'landmark sketch of the face crop, drawn as bilayer_jax.data.stickman.'
                             'draw_fsth_sketches does, pixel / 255 * 2 - 1'}],
      'outputs': [{'name': 'image', 'shape': [batch, s, s, 3], 'dtype': 'float32', 'range': '[-1, 1] nominal',
                   'meaning': 'RGB = (image + 1) / 2, clamp to [0, 1]; the whole frame (no mask)'}],
      'finetuned': bool(animator.finetuned)}
  return tflite_export.write_model(path, model, contract)


def jax_reference(animator: fsth_animator.FSTHAnimator, avatar: fsth_animator.FSTHAvatar, sketches: np.ndarray):
  """The baked function in JAX on the same sketches (what the export is checked against)."""
  return np.asarray(jax.jit(frame_function(animator, avatar))(jnp.asarray(sketches, jnp.float32))[0])
