r"""Runs imported original weights the way the original's infer.py does and writes its data dict.

    python -m bilayer_jax.parity --run_dir DIR --epoch N [--enh_run_dir DIR --enh_epoch M] \
        --inputs inputs.npz --out outputs.npz

Eval mode (stored BN statistics, stored spectral-norm u/v), `inf_apply_masks` and `enh_apply_masks` off,
source-pose predictions and the texture enhancer on (when an enhancer run is given). Inputs are in the
original's layout (NCHW, (B, frames, C, H, W); poses (B, frames, 136)): `source_imgs`, `source_segs`,
`source_stickmen`, `source_poses`, `target_poses` and optionally `target_imgs`, `target_segs`,
`target_stickmen`. Every output is written under the original's data-dict key and layout (as in the
fixtures' outputs_eval.npz), so the file can be compared array by array with the original's output.
"""

from typing import Any, Dict, Mapping

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import cli
from bilayer_jax import xla_cpu
from bilayer_jax.convert import original
from bilayer_jax.models.bilayer import BilayerGenerator
from bilayer_jax.models.config import BilayerConfig

_IMAGE_KEYS = ('source_imgs', 'source_segs', 'source_stickmen', 'target_imgs', 'target_segs', 'target_stickmen')
_POSE_KEYS = ('source_poses', 'target_poses')


def inputs_from_original_layout(inputs: Mapping[str, np.ndarray]) -> Dict[str, jax.Array]:
  """(B, F, C, H, W) NCHW arrays -> (B, F, H, W, C); poses unchanged."""
  batch = {}
  for key in _IMAGE_KEYS + _POSE_KEYS:
    if key in inputs:
      value = np.asarray(inputs[key], np.float32)
      batch[key] = jnp.asarray(value.transpose(0, 1, 3, 4, 2) if key in _IMAGE_KEYS else value)
  missing = [k for k in ('source_imgs', 'source_segs', 'source_stickmen', 'source_poses', 'target_poses')
             if k not in batch]
  if missing:
    raise ValueError(f'inputs lack required arrays {missing}')
  return batch


def _to_original_layout(key: str, value: np.ndarray) -> np.ndarray:
  if key.endswith('_uvs') and not key.endswith('delta_uvs'):
    return value  # sampling grids are (B, F, H, W, 2) in the original too
  if value.ndim == 5:
    return value.transpose(0, 1, 4, 2, 3)
  if value.ndim == 4:
    return value.transpose(0, 3, 1, 2)
  return value


def outputs_to_original_layout(outputs: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Flattens a `BilayerGenerator` output dict into the original's keys and layouts (numpy)."""
  result = {}
  for key, value in jax.device_get(dict(outputs)).items():
    if key == 'source_idt_embeds':
      for k, embed in enumerate(value):
        result[f'{key}/{k}'] = embed.transpose(0, 3, 1, 2)
    elif key.startswith('adaptive/'):
      for i, (weight, bias) in enumerate(value):
        weight = weight[..., None, None] if weight.ndim == 3 else weight
        result[f'{key}/{i:02d}/weight'] = weight
        result[f'{key}/{i:02d}/bias'] = bias
    elif key == 'enh_steps':
      for i, step in enumerate(value):
        for name, array in step.items():
          result[f'enh_steps/{i}/{name}'] = array.transpose(0, 3, 1, 2)
    else:
      result[key] = _to_original_layout(key, np.asarray(value))
  return result


def eval_forward(cfg: BilayerConfig, variables: Mapping[str, Any], batch: Mapping[str, jax.Array]):
  """infer.py's forward: eval mode, no masks, source predictions and (if present) the enhancer."""
  gen_vars = variables['generator']
  with_enhancer = 'texture_enhancer' in gen_vars['params']
  model = BilayerGenerator(cfg, with_enhancer=with_enhancer)
  fn = jax.jit(lambda v, b: model.apply(v, b, train=(), inf_apply_masks=False, enh_apply_masks=False,
                                        pred_source_data=True, enhance=with_enhancer))
  return fn(gen_vars, dict(batch))


FLAGS = flags.FLAGS


def _define_flags():
  """Defines the command-line flags (only when run as a program, so importing the module is side-effect free)."""
  flags.DEFINE_string('run_dir', None, 'Base run directory of the original (args.txt + checkpoints/).')
  flags.DEFINE_string('epoch', None, 'Base checkpoint epoch.')
  flags.DEFINE_string('enh_run_dir', None, 'Enhancer run directory (optional).')
  flags.DEFINE_string('enh_epoch', None, 'Enhancer checkpoint epoch.')
  flags.DEFINE_string('inputs', None, 'npz with inputs in the original layout.')
  flags.DEFINE_string('out', None, 'Output npz.')


def main(argv):
  del argv
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  cfg, variables, _ = original.import_run(FLAGS.run_dir, FLAGS.epoch, FLAGS.enh_run_dir, FLAGS.enh_epoch)
  with np.load(FLAGS.inputs) as data:
    batch = inputs_from_original_layout(dict(data))
  outputs = outputs_to_original_layout(eval_forward(cfg, variables, batch))
  out = FLAGS.out if FLAGS.out.endswith('.npz') else FLAGS.out + '.npz'
  tmp = out[:-len('.npz')] + '.tmp.npz'
  np.savez(tmp, **outputs)
  import os  # pylint: disable=g-import-not-at-top
  os.replace(tmp, out)
  print(f'wrote {len(outputs)} arrays to {out}')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['run_dir', 'epoch', 'inputs', 'out'])
  cli.run(main)
