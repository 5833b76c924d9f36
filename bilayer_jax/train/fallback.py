"""Restoring the newest checkpoint that reads back, setting unreadable ones aside.

A checkpoint directory can exist and still not read back: a disk that filled up, a node that died while an
asynchronous save was being committed, a file truncated by a copy. `restore_latest_readable` tries the
steps newest first. One that fails (unreadable metadata, truncated or missing array files, a missing item)
is renamed `<step>.corrupt` (never deleted) with what the failed restore printed in its
`restore_error.log`, is named in one warning with the reason, and the previous step is tried. Every process
of a multi-host job makes the same choice (a step counts as readable only if it read back on every host).
If none reads back, `CheckpointError` says so. A checkpoint whose array names or shapes differ from the
config's state is not corruption but a config mismatch: `CheckpointError`, and it stays in place.
"""

import contextlib
import gc
import os
import pathlib
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from bilayer_jax import errors


class CheckpointError(errors.UserError, RuntimeError):
  """No checkpoint of a workdir reads back, or one was written for another architecture."""


def _first_line(error: BaseException) -> str:
  """The innermost cause's type and first line (orbax wraps tensorstore's OUT_OF_RANGE etc.)."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:200]


@contextlib.contextmanager
def _stderr_to(path: pathlib.Path):
  """Sends file descriptor 2 to `path` for the duration: a failed restore makes tensorstore's worker threads
  print hundreds of tracebacks straight to stderr (not through Python logging)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(path, 'wb') as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)


def _try_restore(manager: ocp.CheckpointManager, step: int, abstract: Any, log: pathlib.Path):
  """(state, '') or (None, reason); a failure's traceback is appended to `log`."""
  step_dir = pathlib.Path(manager.directory) / str(step)
  try:
    _check_structure(step_dir, abstract)
    return restore(manager, step, abstract)[0], ''
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # any failure to read back means "unusable"
    reason = _first_line(e)
    with open(log, 'a') as f:
      traceback.print_exception(e, file=f)
    del e
    gc.collect()  # the failed read's abandoned coroutines report "Exception ignored" when collected: do it here
    sys.stderr.flush()
    return None, reason


def _shapes(tree: Any) -> Dict[str, Tuple[int, ...]]:
  """'a/b/0/c' -> shape for every array (orbax's metadata stores named tuples as dicts: compare names only)."""
  name = lambda k: str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
  return {'/'.join(name(k) for k in path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_structure(step_dir: pathlib.Path, abstract_state: Any) -> None:
  """Raises CheckpointError if the saved arrays' names or shapes differ from this config's state; other
  exceptions (unreadable metadata) propagate and mark the checkpoint as corrupt."""
  metadata = ocp.StandardCheckpointHandler().metadata(step_dir / 'state')
  found, expected = _shapes(metadata.tree), _shapes(abstract_state)
  for key in sorted(set(found) | set(expected)):
    if found.get(key) != expected.get(key):
      raise CheckpointError(
          f'{step_dir}: {key} has shape {found.get(key, "absent")}, this config needs '
          f'{expected.get(key, "absent")}: the checkpoint was written with another config (use its config '
          'or another workdir)')


def _all_hosts_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (each host reads its own shards and may fail alone)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _set_aside(manager: ocp.CheckpointManager, step: int, log: pathlib.Path) -> pathlib.Path:
  """Renames checkpoints/<step> to <step>.corrupt[N] (never deletes), copies `log` into it as
  restore_error.log and makes the manager forget the step. Returns the new path."""
  _sync(f'bilayer_jax/set_aside/{step}/before')  # every host picks the same name before the rename
  directory = pathlib.Path(manager.directory) / str(step)
  target = directory.with_name(f'{step}.corrupt')
  suffix = 1
  while target.exists():
    suffix += 1
    target = directory.with_name(f'{step}.corrupt{suffix}')
  if jax.process_index() == 0:
    os.replace(directory, target)
    shutil.copyfile(log, target / 'restore_error.log')
  _sync(f'bilayer_jax/set_aside/{step}/after')
  manager.reload()
  return target


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                           meta=ocp.args.JsonRestore()))
  return restored['state'], restored['meta']


def _wait_until_quiet(log: pathlib.Path, quiet_s: float = 2.0, limit_s: float = 60.0) -> None:
  """Waits until nothing more is printed to `log` for `quiet_s`: reads of a failed restore that were in flight
  go on reporting to stderr from tensorstore's threads after the restore has failed."""
  deadline, size, since = time.time() + limit_s, -1, time.time()
  while time.time() < deadline and time.time() - since < quiet_s:
    gc.collect()
    time.sleep(0.2)
    if log.stat().st_size != size:
      size, since = log.stat().st_size, time.time()


def _first_readable(manager: ocp.CheckpointManager, abstract: Any, log: pathlib.Path):
  """(state, step, [(step, reason, renamed to)...]) trying the steps newest first (stderr goes to `log`)."""
  bad = []
  for step in sorted(manager.all_steps(), reverse=True):
    state, reason = _try_restore(manager, step, abstract, log)
    if _all_hosts_agree(not reason):
      return state, step, bad
    reason = reason or 'failed on another host'
    bad.append((step, reason, _set_aside(manager, step, log)))
  return None, None, bad


def restore_latest_readable(manager: ocp.CheckpointManager, abstract: Any) -> Tuple[Any, Optional[int]]:
  """(state, step) of the newest checkpoint that reads back completely (see the module docstring);
  (None, None) if there is no checkpoint. Raises CheckpointError if none reads back."""
  with tempfile.TemporaryDirectory() as tmp:
    log = pathlib.Path(tmp) / 'restore.log'
    # The whole sequence runs with stderr captured: tensorstore's threads keep printing tracebacks of a failed
    # restore ("Event loop is closed", hundreds of them) while the next step is being read.
    with _stderr_to(log):
      state, step, bad = _first_readable(manager, abstract, log)
      if bad:
        _wait_until_quiet(log)
    if not bad:
      sys.stderr.write(log.read_text(errors='replace'))
  for bad_step, reason, target in bad:
    logging.warning('checkpoint %s/%d does not read back (%s): renamed to %s (details in its restore_error.log)%s',
                    manager.directory, bad_step, reason, target.name,
                    '; falling back to the previous one' if state is not None or bad_step != bad[-1][0] else '')
  if state is None and bad:
    listed = '; '.join(f'{s} ({r})' for s, r, _ in bad)
    raise CheckpointError(f'no checkpoint in {manager.directory} reads back: {listed}. They were renamed to '
                          '<step>.corrupt (nothing deleted): rename one back to retry it, or move them away to '
                          'start from scratch')
  return state, step
