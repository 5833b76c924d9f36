"""Orbax checkpointing of the training state, preemption handling and the resume order.

Checkpoints live in WORKDIR/checkpoints/<step>/ (orbax CheckpointManager: asynchronous, keep-N, atomic:
a step directory appears only when completely written, so a half-written one is never restored). Each
holds the full training state and a small JSON ('meta': step, stage, seed).

Resume order (`restore_or_init`): (1) this workdir's newest checkpoint that reads back completely (older
ones are tried when the newest is corrupt: `fallback.py`), (2) `config.resume` (another workdir's newest
readable full state), (3) `config.init_from` (a params directory: model variables only, e.g. weights
imported from the original; networks it lacks keep their fresh initialisation), (4) scratch.
"""

import pathlib
import signal
import threading
from typing import Any, Callable, Dict, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp

from bilayer_jax import model_io
from bilayer_jax.train import fallback


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / 'checkpoints', options=options,
                               item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: Dict[str, Any], force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=force)


def with_shardings(state_shape: Any, shardings: Any) -> Any:
  """Abstract arrays (ShapeDtypeStruct) carrying their target shardings."""
  return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                state_shape, shardings)


def restore_or_init(manager: ocp.CheckpointManager, config, abstract_state: Any, shardings: Any,
                    init_fn: Callable[[], Any], merge_params_fn: Callable[[Any, Dict[str, Any]], Any]):
  """Returns (state, source) following the resume order in the module docstring."""
  abstract = with_shardings(abstract_state, shardings)
  state, step = fallback.restore_latest_readable(manager, abstract)
  if state is not None:
    return state, f'resumed from this workdir at step {step}'
  if config.resume:
    other = make_manager(config.resume, keep=1)
    try:
      state, step = fallback.restore_latest_readable(other, abstract)
    finally:
      other.close()
    if state is None:
      raise fallback.CheckpointError(f'config.resume={config.resume!r} has no complete checkpoint')
    return state, f'resumed from {config.resume} step {step}'
  state = init_fn()
  if config.init_from:
    cfg, variables, info = model_io.load_params(config.init_from)
    state = merge_params_fn(state, variables)
    return state, f'initialised {", ".join(info["networks"])} from {config.init_from}'
  return state, 'initialised from scratch'


class PreemptionGuard:
  """Turns SIGTERM (and SIGINT) into a flag the training loop polls to save and exit cleanly.

  With several processes, orbax's `reached_preemption` (jax's preemption sync service) makes every host stop
  at the same step; with one process the signal flag is enough.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not in the main thread (e.g. a notebook worker): rely on orbax only
        pass

  def _handle(self, signum, frame):
    del frame
    logging.warning('received signal %d: will checkpoint and stop after this step', signum)
    self._event.set()

  def should_stop(self, manager: Optional[ocp.CheckpointManager], step: int) -> bool:
    if jax.process_count() > 1 and manager is not None:
      return bool(manager.reached_preemption(step))
    return self._event.is_set()

  def close(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
