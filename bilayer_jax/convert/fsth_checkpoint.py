"""The FSTH reference's checkpoint files <-> params directories (docs/fsth.md#weights).

The reference saves meta-learning as one file (`model_weights.tar`: a dict with `E_state_dict`,
`G_state_dict`, `D_state_dict`, `epoch`, `num_vid`, the loss histories and the optimiser states) and a
fine-tuned person as another (`finetuned_model.tar`: `G_state_dict`, `D_state_dict` with the person's ψ and
w′). Importing reads the state dicts on the CPU (`torch.load(weights_only=True)`, no CUDA) and converts
them with `fsth_reference` (every key and shape checked, errors name the key); the width is read from the
checkpoint, so reduced reference models import too. Exporting writes the same two files from a params
directory (the second only for fine-tuned params), atomically.

Not carried over: the discriminator's `W_i` (the reference keeps per-video rows in separate
`Wi_weights/W_<i>/W_<i>.tar` files and a (512, 32) placeholder in the checkpoint; a params directory holds
no per-video rows, so export writes a zero placeholder of that shape) and the optimiser states (the
reference's `train.py` resumes from them; its `embedder_inference.py` and `finetuning_training.py` need only
the networks).
"""

import os
import pathlib
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from bilayer_jax.convert import fsth_reference
from bilayer_jax.convert import original
from bilayer_jax.models.fsth import networks
from bilayer_jax.models.fsth.config import FSTHConfig

META_FILE = 'model_weights.tar'
FINETUNED_FILE = 'finetuned_model.tar'
_KEYS = {'embedder': 'E_state_dict', 'generator': 'G_state_dict', 'discriminator': 'D_state_dict'}
REFERENCE_SLOTS = 32  # the reference's W_i placeholder: (embedding_dim, 32)


class CheckpointFileError(original.RunDirError):
  """A reference checkpoint file is missing, unreadable or lacks a network."""


def _load(path: os.PathLike, networks_wanted) -> Dict[str, Dict[str, np.ndarray]]:
  """{network: state dict as numpy} from a reference checkpoint file (a folder: its model_weights.tar)."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / META_FILE
  checkpoint = original.load_torch_file(path, CheckpointFileError)
  missing = [_KEYS[n] for n in networks_wanted if not isinstance(checkpoint, Mapping) or _KEYS[n] not in checkpoint]
  if missing:
    raise CheckpointFileError(f'{path}: no {", ".join(missing)} (an FSTH reference checkpoint has '
                              f'{", ".join(_KEYS[n] for n in networks_wanted)})')
  return {n: {k: v.detach().cpu().numpy() for k, v in checkpoint[_KEYS[n]].items()} for n in networks_wanted}


def _architecture(embedder_state: Mapping[str, np.ndarray]) -> FSTHConfig:
  """The reference's architecture at the width its first convolution has (64 at full size)."""
  key = 'resDown1.conv_l1.weight_orig'
  if key not in embedder_state:
    raise CheckpointFileError(f'the embedder state dict has no {key!r}: not an FSTH reference checkpoint')
  return FSTHConfig(width=int(embedder_state[key].shape[0])).validate()


def _abstract(cfg: FSTHConfig, network: str):
  image = np.zeros((1, cfg.image_size, cfg.image_size, 3), np.float32)
  rows = np.zeros((1, cfg.embedding_dim), np.float32)
  module = {'embedder': networks.Embedder, 'generator': networks.Generator,
            'discriminator': networks.Discriminator}[network](cfg)
  args = {'embedder': (image, image), 'generator': (image, rows), 'discriminator': (image, image, rows)}[network]
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)


def import_run(meta_path: os.PathLike, epoch: Optional[str] = None, finetuned_path: Optional[os.PathLike] = None,
               finetuned_epoch: Optional[str] = None) -> Tuple[FSTHConfig, Dict[str, Any], Dict[str, Any]]:
  """(architecture, variables, metadata) of a meta-learning checkpoint, with the generator and
  discriminator of a fine-tuning checkpoint instead when `finetuned_path` is given (`epoch` is unused:
  one file holds one state)."""
  del epoch, finetuned_epoch
  states = _load(meta_path, fsth_reference.NETWORKS)
  if finetuned_path:
    states.update(_load(finetuned_path, ('generator', 'discriminator')))
  cfg = _architecture(states['embedder'])
  per_network = {}
  for net in fsth_reference.NETWORKS:
    state = states[net]
    if net == 'discriminator' and fsth_reference.VIDEO_MATRIX_KEY in state:
      state, _ = fsth_reference.split_video_matrix(state)
    per_network[net] = jax.device_get(fsth_reference.variables_from_state_dict(
        net, state, _abstract(cfg, net), source=str(finetuned_path if finetuned_path and net != 'embedder'
                                                    else meta_path)))
  generator_side: Dict[str, Dict[str, Any]] = {}
  for net in ('embedder', 'generator'):
    for collection, tree in per_network[net].items():
      generator_side.setdefault(collection, {})[net] = tree
  metadata = {'finetuned': bool(finetuned_path), 'imported_from_reference': 'fsth'}
  return cfg, {'generator': generator_side, 'discriminator': per_network['discriminator']}, metadata


def _state_dicts(variables: Mapping[str, Any], cfg: FSTHConfig) -> Dict[str, Dict[str, np.ndarray]]:
  generator_side = variables['generator']
  per_network = {net: {c: tree[net] for c, tree in generator_side.items() if net in tree}
                 for net in ('embedder', 'generator')}
  placeholder = np.zeros((REFERENCE_SLOTS, cfg.embedding_dim), np.float32)
  return {'embedder': fsth_reference.state_dict_from_variables('embedder', per_network['embedder']),
          'generator': fsth_reference.state_dict_from_variables('generator', per_network['generator']),
          'discriminator': fsth_reference.state_dict_from_variables('discriminator', variables['discriminator'],
                                                                    placeholder)}


def _save(path: pathlib.Path, checkpoint: Dict[str, Any]) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  tensors = {k: ({name: torch.from_numpy(np.array(v)) for name, v in value.items()} if isinstance(value, dict)
                 else value) for k, value in checkpoint.items()}
  original.atomic_write(path, lambda tmp: torch.save(tensors, tmp))


def export_run(out_dir: os.PathLike, epoch: str, cfg: FSTHConfig, variables: Mapping[str, Any],
               metadata: Mapping[str, Any], second_out_dir=None, second_epoch=None, source: str = '') -> None:
  """Writes OUT_DIR/model_weights.tar (and OUT_DIR/finetuned_model.tar for fine-tuned params)."""
  del second_out_dir, second_epoch, source
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  states = _state_dicts(variables, cfg)
  common = {'epoch': int(epoch), 'lossesG': [], 'lossesD': []}
  _save(out / META_FILE, {**common, 'E_state_dict': states['embedder'], 'G_state_dict': states['generator'],
                          'D_state_dict': states['discriminator'], 'num_vid': 0, 'i_batch': 0})
  if metadata.get('finetuned'):
    _save(out / FINETUNED_FILE, {**common, 'G_state_dict': states['generator'],
                                 'D_state_dict': states['discriminator']})
