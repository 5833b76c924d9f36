"""The official LPD checkpoint files (`model_<iteration>.pth`) <-> params directories (docs/lpd.md#weights).

The official `utils.save_model` writes one file per save, `<experiment_dir>/checkpoints/model_<iteration:08>.pth`
(`_0` appended while the name exists): a dict with the 'embedder', 'generator' and 'discriminator' state
dicts, 'running_averages' {'embedder', 'generator'} (the EMA that drive.py renders with; `{}` when
--weights_running_average is off), 'optimizer_G', 'optimizer_D' and 'args' (train.py's argparse.Namespace,
with pathlib paths). A fine-tuned file (args.finetune) holds the generator's `identity_embedding` and a 1-row
discriminator table, and its generator EMA has fine-tuned from the raw meta-learned generator (the official
quirk, docs/lpd.md#training): it is still what drive.py renders with, so it is what we import.

Importing: the architecture comes from `args` (the default modules only), the torchvision encoders' widths
from the embedder's shapes (full size, or uniformly reduced as the parity fixtures'); the generator side is
the EMA (the raw networks, with a warning, when the file has none) and the discriminator drops its table.
Every key and shape is checked (`lpd_reference`). The file is read without running its code: `save_model`
pickles with protocol -1 (4 or 5), which torch's weights-only unpickler does not read (it knows protocol 2's
opcodes), so `torch.load` gets the standard unpickler restricted to the weights-only allowlist plus
argparse.Namespace and pathlib paths; any other global is refused, naming it.

Exporting writes `OUT/checkpoints/model_<epoch:08>.pth` (protocol 2, atomically): the three state dicts,
'running_averages' = the same embedder and generator (our params are the EMA), and the args train.py has with
configs/default.yaml (finetuning-base.yaml on top for fine-tuned params) with our architecture, num_labels 1
and iteration = epoch. Not carried: the projection table (it belongs to the training data: export writes a
1-row U(±0.1) placeholder whose u, v are its exact singular vectors) and the optimiser states (drive.py and
train.py --finetune from a meta-learned file do not load them; resuming train.py from an exported file does).
"""

import argparse
import collections
import functools
import os
import pathlib
import pickle
import re
import types
from typing import Any, Dict, Mapping, Optional, Tuple

from absl import logging
import jax
import numpy as np

from bilayer_jax.convert import lpd_reference
from bilayer_jax.convert import original
from bilayer_jax.models.lpd.config import LPDConfig

GENERATOR_SIDE = ('embedder', 'generator')
MODULES = {'embedder': 'unsupervised_pose_separate_embResNeXt_segmentation',
           'generator': 'vector_pose_unsupervised_segmentation_noBottleneck', 'discriminator': 'no_landmarks'}
# Official argument -> LPDConfig field (`gen_constant_input_size` may be absent: get_net then uses 4).
ARCHITECTURE_ARGS = {'image_size': 'image_size', 'embed_channels': 'identity_dim', 'pose_embedding_size': 'pose_dim',
                     'num_channels': 'num_channels', 'max_num_channels': 'max_num_channels',
                     'gen_constant_input_size': 'constant_size', 'gen_num_residual_blocks': 'num_residual_blocks',
                     'dis_num_blocks': 'dis_num_blocks'}
# Arguments our networks implement one value of (the official defaults).
FIXED_ARGS = {'in_channels': 3, 'out_channels': 3, 'gen_padding': 'zero', 'dis_padding': 'zero', 'norm_layer': 'in',
              'average_function': 'sum'}
# Fields the official code does not take as arguments (torchvision's widths excepted: inferred at import).
_OFFICIAL_CONSTANTS = ('resnext_depths', 'pose_dropout', 'adain_eps', 'spectral_eps', 'mlp_spectral_eps')
NAME = re.compile(r'model_(\d+)((?:_0)*)\.pth')
TABLE_BOUND = 0.1  # nn.Embedding's weight.data.uniform_(-0.1, 0.1) in discriminators/no_landmarks.py
_P = pathlib.Path
# train.py's arguments with configs/default.yaml, less the architecture's (the template of exported args).
TRAIN_ARGS = {
    'args_to_ignore': 'checkpoint,splits_dir,experiments_dir,extension,experiment_name,rank,local_rank,world_size',
    'batch_size': 8, 'batch_size_inference': 5, 'bboxes_dir': _P('/non/existent/file'), 'beta1': 0.0,
    'checkpoint_path': '', 'config_name': '', 'criterions': 'idt_embed, perceptual, adversarial, featmat, '
    'dis_embed, dice', 'data_root': _P('/datasets/VoxCeleb2'), 'dataloader': 'voxceleb2_segmentation_nolandmarks',
    'detailed_metrics': True, 'device': 'cuda', 'dice_weight': 1, 'dis_embed_weight': 0.01, 'draw_oval': True,
    'experiment_name': '', 'experiments_dir': _P('experiments'), 'finetune': False,
    'fixed_val_ids': [50, 100, 200, 250, 300], 'fm_weight': 10.0, 'gan_type': 'gan', 'hvd_batches_per_allreduce': 1,
    'hvd_fp16_allreduce': False, 'idt_embed_weight': 0.006, 'img_dir': _P('cropped_fix'), 'inference': False,
    'iteration': 0, 'kp_dir': _P('cropped_landmarks_fix'), 'local_rank': 0, 'log_frequency_fixed_images': 2500,
    'log_frequency_images': 500, 'log_frequency_loss': 1, 'logging': True, 'lr_dis': 0.0002, 'lr_gen': 5e-05,
    'metrics': '', 'n_frames_for_encoder': 8, 'num_epochs': 10**9, 'num_gpus': 2, 'num_visuals_per_img': 2,
    'num_workers': 4, 'optimizer': 'Adam', 'perc_weight': 0.03, 'prefetch_size': 16, 'profile_flops': False,
    'random_seed': 123, 'rank': 0, 'runner': 'holycow', 'save_frequency': 1, 'saver': '',
    'segm_dir': _P('segmentation_Graphonomy'), 'set_eval_mode_in_test': True, 'set_eval_mode_in_train': False,
    'skip_eval': True, 'train_split_path': _P('data/splits/train.csv'), 'use_affine_scale': True,
    'use_affine_shift': True, 'use_pixelwise_augs': True, 'val_split_path': _P('data/splits/val.csv'),
    'vgg_weights_dir': 'criterions/common/', 'weights_running_average': True, 'world_size': 1}
FINETUNE_ARGS = {  # configs/finetuning-base.yaml
    'finetune': True, 'optimizer': 'RAdam', 'lr_gen': 5e-4, 'lr_dis': 8e-4,
    'criterions': 'adversarial, featmat, idt_embed, perceptual, dice', 'img_dir': _P('images-cropped'),
    'kp_dir': _P('keypoints-cropped'), 'segm_dir': _P('segmentation-cropped'), 'num_gpus': 1, 'num_workers': 1,
    'log_frequency_images': 9999999, 'log_frequency_fixed_images': 15, 'fixed_val_ids': [0], 'num_epochs': 140,
    'save_frequency': 0}


class CheckpointFileError(original.RunDirError):
  """An official LPD checkpoint file is missing, unreadable, of another model or lacks a part."""


class _RefusedGlobal(pickle.UnpicklingError):
  """The pickle names a global outside the allowlist."""


@functools.cache
def _allowed_globals() -> Dict[str, Any]:
  from torch import _weights_only_unpickler  # pylint: disable=g-import-not-at-top
  allowed = dict(_weights_only_unpickler._get_allowed_globals())  # pylint: disable=protected-access
  allowed['argparse.Namespace'] = argparse.Namespace
  for module in ('pathlib', 'pathlib._local'):  # Python 3.13 moved the classes
    allowed.update({f'{module}.PosixPath': pathlib.PosixPath, f'{module}.PurePosixPath': pathlib.PurePosixPath,
                    f'{module}.WindowsPath': pathlib.PureWindowsPath,
                    f'{module}.PureWindowsPath': pathlib.PureWindowsPath})
  return allowed


class _Unpickler(pickle.Unpickler):
  """The standard unpickler (every protocol) that resolves only allowlisted globals: no code of the file runs."""

  def find_class(self, module, name):
    allowed = _allowed_globals().get(f'{module}.{name}')
    if allowed is None:
      raise _RefusedGlobal(f'{module}.{name}')
    return allowed


_PICKLE = types.SimpleNamespace(__name__='restricted_pickle', Unpickler=_Unpickler,
                                load=lambda f, **kwargs: _Unpickler(f, **kwargs).load())


def read_checkpoint(path: os.PathLike) -> Dict[str, Any]:
  """The checkpoint dict of an official file, on the CPU (see the module docstring for what may be in it)."""
  import torch  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointFileError(f'checkpoint file not found: {path}')
  try:
    checkpoint = torch.load(path, map_location='cpu', weights_only=False, pickle_module=_PICKLE)
  except _RefusedGlobal as e:
    raise CheckpointFileError(f'{path}: pickles a {e}, which is not loaded (only tensors, containers, '
                              'argparse.Namespace and pathlib paths are; no code from a checkpoint runs)') from e
  except Exception as e:  # torch raises several types for corrupt/truncated files
    raise CheckpointFileError(f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: '
                              f'{str(e).splitlines()[0] if str(e) else ""})') from e
  missing = [k for k in (*lpd_reference.NETWORKS, 'args') if not isinstance(checkpoint, Mapping) or k not in checkpoint]
  if missing:
    found = (f'keys {", ".join(sorted(map(str, checkpoint))[:4])}{", ..." if len(checkpoint) > 4 else ""}'
             if isinstance(checkpoint, Mapping) else f'a {type(checkpoint).__name__}')
    raise CheckpointFileError(f'{path}: not an official LPD checkpoint: no {", ".join(map(repr, missing))} '
                              f'(found {found})')
  return checkpoint


def checkpoint_file(path: os.PathLike, epoch: Optional[str] = None) -> pathlib.Path:
  """A file itself; a run directory's checkpoints/model_<epoch>.pth, or its newest model_*.pth."""
  path = pathlib.Path(path)
  if not path.is_dir():
    if epoch:
      raise CheckpointFileError(f'--epoch {epoch}: only for a run directory (given the file {path})')
    return path
  folder = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
  if epoch:
    name = f'model_{int(epoch):08}.pth' if str(epoch).isdigit() else f'model_{epoch}.pth'
    if not (folder / name).is_file():
      raise CheckpointFileError(f'{folder / name}: no such checkpoint (--epoch {epoch})')
    return folder / name
  found = [(int(m.group(1)), len(m.group(2)), p) for p in folder.glob('model_*.pth') if (m := NAME.fullmatch(p.name))]
  if not found:
    raise CheckpointFileError(f'{path}: no checkpoints/model_<iteration>.pth (an official LPD run directory)')
  return max(found)[2]


def _arguments(args: Any, path: pathlib.Path) -> Dict[str, Any]:
  if isinstance(args, argparse.Namespace):
    return vars(args)
  if isinstance(args, Mapping):
    return dict(args)
  raise CheckpointFileError(f'{path}: \'args\' is a {type(args).__name__}, expected train.py\'s argparse.Namespace')


def _encoder_widths(embedder: Mapping[str, np.ndarray], path: pathlib.Path) -> Dict[str, Any]:
  """torchvision's widths, read from the shapes: ResNeXt stem, stage base widths, groups, width per group;
  MobileNetV2's width multiplier (its last stage has 320 x width_mult channels)."""
  keys = ['identity_encoder.conv1.weight', 'pose_encoder.features.18.0.weight'] + [
      f'identity_encoder.layer{i}.0.conv{j}.weight' for i in range(1, 5) for j in (2, 3)]
  missing = [k for k in keys if k not in embedder]
  if missing:
    raise CheckpointFileError(f'{path}: embedder has no {missing[0]!r}: its encoders are not torchvision\'s '
                              'resnext50_32x4d and mobilenet_v2 (the default embedder\'s)')
  planes = tuple(int(embedder[f'identity_encoder.layer{i}.0.conv3.weight'].shape[0]) // 4 for i in range(1, 5))
  width, per_group = embedder['identity_encoder.layer1.0.conv2.weight'].shape[:2]
  groups = int(width // per_group)
  return {'resnext_stem': int(embedder['identity_encoder.conv1.weight'].shape[0]), 'resnext_planes': planes,
          'resnext_groups': groups, 'resnext_width_per_group': int(width * 64 // (planes[0] * groups)),
          'mobilenet_width': embedder['pose_encoder.features.18.0.weight'].shape[1] / 320}


def _encoder_widths_of(cfg: LPDConfig) -> Dict[str, Any]:
  return {k: getattr(cfg, k) for k in ('resnext_stem', 'resnext_planes', 'resnext_groups', 'resnext_width_per_group',
                                       'mobilenet_width')}


def architecture(args: Mapping[str, Any], embedder: Mapping[str, np.ndarray], path: pathlib.Path) -> LPDConfig:
  """The LPDConfig of a checkpoint's args (default modules only) and embedder shapes."""
  modules = {net: args.get(net) for net in MODULES}
  if modules != MODULES:
    other = ', '.join(f'{net} {name!r}' for net, name in modules.items() if name != MODULES[net])
    raise CheckpointFileError(f'{path}: args name {other}; the lpd family is the default modules '
                              f'({", ".join(f"{n} {m!r}" for n, m in MODULES.items())})')
  other = [f'{k}={args[k]!r} (expected {v!r})' for k, v in FIXED_ARGS.items() if k in args and args[k] != v]
  if other:
    raise CheckpointFileError(f'{path}: args {", ".join(other)}: the lpd family implements the defaults only')
  values = {'gen_constant_input_size': 4, **args}
  missing = [k for k in ARCHITECTURE_ARGS if k not in values]
  if missing:
    raise CheckpointFileError(f'{path}: args has no {", ".join(missing)} (train.py\'s architecture arguments)')
  fields = {field: int(values[arg]) for arg, field in ARCHITECTURE_ARGS.items()}
  widths = _encoder_widths(embedder, path)
  try:
    return LPDConfig(**fields, **widths).validate()
  except ValueError as e:
    raise CheckpointFileError(f'{path}: {e}') from e


def _network(generator_side: Mapping[str, Any], net: str) -> Dict[str, Any]:
  return {c: tree[net] for c, tree in generator_side.items() if net in tree}


def _numpy(state: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def import_run(meta_path: os.PathLike, epoch: Optional[str] = None, finetuned_path: Optional[os.PathLike] = None,
               finetuned_epoch: Optional[str] = None) -> Tuple[LPDConfig, Dict[str, Any], Dict[str, Any]]:
  """(architecture, variables, metadata) of an official checkpoint file or run directory (`epoch` picks
  checkpoints/model_<epoch>.pth there; default the newest). A fine-tuned file is whole: no second path."""
  del finetuned_epoch
  if finetuned_path:
    raise CheckpointFileError(f'{finetuned_path}: the lpd family reads one file (a fine-tuned checkpoint holds '
                              'every network); pass it alone as the run')
  path = checkpoint_file(meta_path, epoch)
  checkpoint = read_checkpoint(path)
  args = _arguments(checkpoint['args'], path)
  finetuned = bool(args.get('finetune', False))
  averages = checkpoint.get('running_averages') or {}
  states = {net: _numpy(checkpoint[net]) for net in lpd_reference.NETWORKS}
  cfg = architecture(args, states['embedder'], path)
  reduced = _encoder_widths_of(cfg) != _encoder_widths_of(LPDConfig())
  per_network, sources = {}, {}
  for net in lpd_reference.NETWORKS:
    state, source = states[net], str(path)
    if net != 'discriminator':
      if net in averages:
        state, source = _numpy(averages[net]), f'{path}: running_averages'
      if net == 'embedder' and reduced:  # a mismatch may then be widths that are not one uniform reduction
        source += f'; torchvision encoders at the reduced widths of their first layers {_encoder_widths_of(cfg)}'
      else:
        logging.warning('%s: no running_averages[%r] (trained with --no-weights_running_average?): importing the '
                        'raw %s instead of its EMA', path, net, net)
      sources[net] = 'running_averages' if net in averages else 'raw'
    per_network[net] = jax.device_get(lpd_reference.variables_from_state_dict(
        net, cfg, state, finetuned and net == 'generator', source))
  generator_side: Dict[str, Dict[str, Any]] = {}
  for net in GENERATOR_SIDE:
    for collection, tree in per_network[net].items():
      generator_side.setdefault(collection, {})[net] = tree
  name = NAME.fullmatch(path.name)
  # The official models are trained and driven on its face-box crop (docs/lpd.md#crop): inference crops so.
  metadata = {'imported_from_reference': 'lpd', 'checkpoint': str(path), 'finetuned': finetuned,
              'iteration': int(args.get('iteration', int(name.group(1)) if name else 0)), 'weights': sources,
              'crop_style': 'latentpose'}
  return cfg, {'generator': generator_side, 'discriminator': per_network['discriminator']}, metadata


def placeholder_table(channels: int, seed: int = 0) -> Dict[str, Any]:
  """One U(±0.1) row as the official initialises the table; u, v its exact singular vectors (power iteration
  is at its fixed point)."""
  row = np.random.default_rng(seed).uniform(-TABLE_BOUND, TABLE_BOUND, (1, channels)).astype(np.float32)
  return {'params': {'embedding': row},
          'spectral': {'u': np.ones((1,), np.float32), 'v': row[0] / np.linalg.norm(row[0])}}


def official_args(cfg: LPDConfig, finetuned: bool, iteration: int, experiment_dir: pathlib.Path) -> argparse.Namespace:
  """What train.py would have saved for this architecture (the module docstring says which config)."""
  architecture_values = {arg: getattr(cfg, field) for arg, field in ARCHITECTURE_ARGS.items()}
  return argparse.Namespace(**{**TRAIN_ARGS, **(FINETUNE_ARGS if finetuned else {}), **MODULES, **FIXED_ARGS,
                               **architecture_values, 'num_labels': 1, 'iteration': iteration,
                               'experiment_dir': experiment_dir})


def _check_official(cfg: LPDConfig) -> None:
  default = LPDConfig()
  other = [f'{f}={getattr(cfg, f)!r}' for f in _OFFICIAL_CONSTANTS if getattr(cfg, f) != getattr(default, f)]
  if other:
    raise CheckpointFileError(f'model_config {", ".join(other)}: the official code fixes '
                              f'{", ".join(f"{f}={getattr(default, f)!r}" for f in _OFFICIAL_CONSTANTS)}')
  if _encoder_widths_of(cfg) != _encoder_widths_of(default):
    logging.warning('torchvision encoders at reduced width %s: the official code builds full-size ones, so only '
                    'a torchvision patched to these widths loads the file', _encoder_widths_of(cfg))


def export_run(out_dir: os.PathLike, epoch: str, cfg: LPDConfig, variables: Mapping[str, Any],
               metadata: Mapping[str, Any], second_out_dir=None, second_epoch=None, source: str = '') -> None:
  """Writes OUT_DIR/checkpoints/model_<epoch:08>.pth (see the module docstring); fine-tuned (args.finetune)
  when the generator has its own identity_embedding."""
  import torch  # pylint: disable=g-import-not-at-top
  del metadata, second_epoch
  if second_out_dir:
    raise CheckpointFileError(f'--enh_out {second_out_dir}: the lpd family writes one checkpoint file')
  if not str(epoch).isdigit():
    raise CheckpointFileError(f'--epoch {epoch!r}: expected the iteration, a non-negative integer')
  if 'discriminator' not in variables:
    raise CheckpointFileError(f'{source}: no discriminator (the official checkpoint needs all three networks)')
  _check_official(cfg)
  generator_side = jax.device_get(variables['generator'])
  finetuned = 'identity_embedding' in generator_side['params']['generator']  # what args.finetune must say
  states = {net: lpd_reference.state_dict_from_variables(net, cfg, _network(generator_side, net))
            for net in GENERATOR_SIDE}
  states['discriminator'] = lpd_reference.state_dict_from_variables(
      'discriminator', cfg, jax.device_get(variables['discriminator']), placeholder_table(cfg.identity_dim))
  tensors = {net: collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state.items())
             for net, state in states.items()}
  out = pathlib.Path(out_dir)
  checkpoint = {**tensors, 'running_averages': {net: tensors[net].copy() for net in GENERATOR_SIDE},
                'args': official_args(cfg, finetuned, int(epoch), out)}
  original.atomic_write(out / 'checkpoints' / f'model_{int(epoch):08}.pth', lambda tmp: torch.save(checkpoint, tmp))
