"""What a model family gives the shared trainer, evaluation, driving and export: plain dataclasses.

A family is one talking-head model (the bi-layer model today; FSTH and LPD next). The shared code reaches a
model only through its `ModelFamily`:

* the trainer (`bilayer_jax/train/loop.py`) calls `family.training` for everything model-specific: the
  static step configuration of a stage, the variables and the training state, the step itself, the frozen
  networks its losses use, the periodic evaluation and the standing statistics;
* the evaluation command, drive, export and the notebooks build an animator with `family.animator`
  (a photo -> an avatar once -> frames per pose), whose `fold` gives the per-frame graph the exporters write;
* `family.converters` read and write checkpoints of the family's reference implementation.

Contract between a family and the trainer: the training state is a dict with `step`, `params`,
`model_state` and `opt_state`, and `training.model_variables(state)` returns
`{'generator': variables, 'discriminator': variables}` (the generator side holds every network but the
discriminator, keyed by network name); the loop checkpoints, shards and logs the state without knowing more.
"""

import dataclasses
from typing import Any, Callable, Mapping, Tuple


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One training stage of a family.

  Attributes:
    name: what `config.stage` calls it.
    networks: the networks it trains by default (`config.networks_to_train`).
    objective: which loss trains which network, in one or two sentences (shown by the README and docs).
  """
  name: str
  networks: Tuple[str, ...]
  objective: str


def no_stats_fn(cfg, networks_with_stats):
  """`make_stats_fn` of a family without standing statistics (FSTH: no batch norms; LPD: the official code
  keeps BatchNorm running averages instead)."""
  del cfg, networks_with_stats


def keep_statistics(stats_fn, state, batches, networks_with_stats):
  """`standing_statistics` of such a family: the state as it is."""
  del stats_fn, batches, networks_with_stats
  return state


@dataclasses.dataclass(frozen=True)
class Training:
  """The model-specific functions the shared trainer calls (`cfg` is the value `step_config` returns).

  Attributes:
    step_config: (run config, stage name) -> a static, hashable description of one stage's step (changing
      it recompiles); it has `.model` (the architecture), `.stage`, `.networks_to_train` and
      `.generator_train_modes` (the generator-side networks in train mode, for standing statistics).
    dummy_batch: run config -> zeros shaped like one global training batch (for shapes and compilation).
    variable_shapes: (cfg, batch) -> abstract model variables.
    init_variables: (cfg, seed, shapes) -> fresh model variables, made on the host.
    init_state: (cfg, variables) -> the training state (fresh optimiser states).
    train_step: (cfg, state, batch, frozen params) -> (state, metrics); pure, jitted and sharded by the loop.
    model_variables: state -> {'generator': ..., 'discriminator': ...}.
    frozen_params: (run config, cfg) -> the frozen networks the losses use (e.g. perceptual nets), loaded.
    merge_init: (cfg, state, variables, source name) -> the state with the networks present in imported
      variables (`config.init_from`) copied in, shapes checked.
    make_eval_fn: (cfg, num_images, metric names, lpips module or None, out_sharding) -> jit function
      (generator variables, batch, lpips variables) -> (metrics, image columns) for held-out batches.
    make_stats_fn: (cfg, networks) -> jit function of one standing-statistics batch, or None when the
      family has none.
    standing_statistics: (stats fn, state, batches, networks) -> the state with averaged statistics.
    image_grid: (image columns, rows) -> one uint8 image for TensorBoard.
    row_sharded: top-level state entries sharded by rows over the mesh whatever `mesh.fsdp` says (e.g.
      a per-video table).
    with_video_index: the batches carry 'video_index' (the example's index in its split).
    landmark_style: how the input pipeline draws landmark images (`bilayer_jax.data.stickman.STYLES`).
    example_transform: (run config, is the training split) -> a per-example transform (decoded example,
      seed) -> example for the input pipeline, or None (e.g. LPD's pose frame, augmented for training). Every
      split must give batches of the same structure (the step and the evaluation compile against one).
  """
  step_config: Callable[..., Any]
  dummy_batch: Callable[..., Any]
  variable_shapes: Callable[..., Any]
  init_variables: Callable[..., Any]
  init_state: Callable[..., Any]
  train_step: Callable[..., Any]
  model_variables: Callable[..., Any]
  frozen_params: Callable[..., Any]
  merge_init: Callable[..., Any]
  make_eval_fn: Callable[..., Any]
  make_stats_fn: Callable[..., Any]
  standing_statistics: Callable[..., Any]
  image_grid: Callable[..., Any]
  row_sharded: Tuple[str, ...] = ()
  with_video_index: bool = False
  landmark_style: str = 'stickman'
  example_transform: Callable[..., Any] = lambda config, training_split: None


@dataclasses.dataclass(frozen=True)
class Converter:
  """Checkpoints of a family's reference implementation.

  Attributes:
    import_run: (run dir, epoch, optional second-stage run dir and epoch) -> (architecture, variables,
      metadata).
    export_run: (out dir, epoch, architecture, variables, metadata of the params directory, optional
      second-stage out dir and epoch, source=name for messages) -> None.
  """
  import_run: Callable[..., Any]
  export_run: Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One talking-head model family (see the module docstring).

  Attributes:
    name: the registry key, what `config.family` and a params directory's config.json say.
    description: one line for listings.
    model_config: the frozen dataclass of its architecture (the config's `model` section).
    networks: every network it has, in a fixed order.
    stages: its training stages.
    training: the functions the trainer calls.
    animator: (architecture, generator-side variables) -> an animator (init_avatar, render, drive, fold,
      composite).
    animator_from_params: params directory -> an animator.
    converters: checkpoint formats of reference implementations, by name (e.g. 'original').
  """
  name: str
  description: str
  model_config: type
  networks: Tuple[str, ...]
  stages: Tuple[StageSpec, ...]
  training: Training
  animator: Callable[..., Any]
  animator_from_params: Callable[..., Any]
  converters: Mapping[str, Converter]

  def stage(self, name: str) -> StageSpec:
    return {s.name: s for s in self.stages}[name]
