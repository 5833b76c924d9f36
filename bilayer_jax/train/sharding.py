"""Device mesh and shardings of the training state and batches.

One mesh axis, 'data', over every device of every host. Batches are split along their leading (identity)
axis; parameters and optimiser state are replicated (data parallel, the default) or, with `fsdp`, each array
of at least `fsdp_min_size` elements is split along its largest dimension divisible by the number of
devices (FSDP-style: XLA all-gathers them for the forward and reduce-scatters the gradients). A family's
per-video tables are always split by rows (`row_sharded`). BatchNorm
statistics under jit are over the global batch: the original's SyncBN across its 8 GPUs.
"""

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def _array_sharding(shape, mesh: Mesh, fsdp: bool, min_size: int) -> NamedSharding:
  n = mesh.shape[DATA_AXIS]
  if not fsdp or n == 1 or int(np.prod(shape)) < min_size:
    return replicated(mesh)
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp: bool = False, min_size: int = 2**18,
                    row_sharded: Sequence[str] = ()) -> Any:
  """A sharding for every leaf of an (abstract) training state; the top-level entries named in
  `row_sharded` (e.g. a per-video table) are split along their first axis whatever `fsdp` says."""
  def leaf(path, x):
    if path[0].key in row_sharded and len(x.shape):
      return NamedSharding(mesh, P(DATA_AXIS, *([None] * (x.ndim - 1))))
    return _array_sharding(x.shape, mesh, fsdp, min_size)
  return jax.tree_util.tree_map_with_path(leaf, abstract_state)


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if global_batch % devices:
    raise ValueError(f'batch_size {global_batch} is not divisible by the {devices} devices of the mesh')
  if global_batch % jax.process_count():
    raise ValueError(f'batch_size {global_batch} is not divisible by the {jax.process_count()} processes')
