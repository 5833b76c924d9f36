"""XLA:CPU flags that make this model fast on x86-64 CPUs, applied by an explicit call before JAX starts.

jaxlib 0.10's XLA:CPU hands convolutions, dots, elementwise ops and reductions to YNNPACK fusions by
default; for this model they are much slower than the Eigen kernels they replace, in training and in
inference (docs/benchmarks.md#xla-cpu-ynnpack-fusions). `configure()` turns them off by adding
`CPU_XLA_FLAGS` to `XLA_FLAGS`. The entry points call it first (run.py, drive, export, the tools, the
benches), notebooks through `bilayer_jax.colab.runtime.setup()`; library users may call it before their
first JAX computation. Importing bilayer_jax changes nothing.

It is guarded, because XLA aborts the whole process on a flag it does not know: it applies only with a
jaxlib whose XLA:CPU has the flag (`KNOWN_JAXLIB`), never overrides a choice already in XLA_FLAGS, and
does nothing once a JAX backend exists (the flag would no longer take effect). It only affects CPU
compiles.
"""

import importlib.metadata
import os
import sys
from typing import MutableMapping, Optional

from absl import logging

FLAG = 'xla_cpu_experimental_ynn_fusion_type'
CPU_XLA_FLAGS = (f'--{FLAG}=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,-LIBRARY_FUSION_TYPE_DOT,'
                 '-LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,-LIBRARY_FUSION_TYPE_ELTWISE,-LIBRARY_FUSION_TYPE_REDUCE')
# jaxlib release series whose XLA:CPU accepts FLAG with these values (the pinned 0.10.2 is tested).
KNOWN_JAXLIB = ('0.10.',)


def _backend_started() -> bool:
  if 'jax' not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def configure(environ: Optional[MutableMapping[str, str]] = None) -> bool:
  """Adds CPU_XLA_FLAGS to XLA_FLAGS where that is safe (see the module docstring); returns whether it did."""
  environ = os.environ if environ is None else environ
  current = environ.get('XLA_FLAGS', '')
  if FLAG in current:
    return False
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return False
  if not version.startswith(KNOWN_JAXLIB):
    logging.info('jaxlib %s: leaving XLA:CPU fusion flags alone (known for %s)', version, KNOWN_JAXLIB)
    return False
  if _backend_started():
    logging.warning('bilayer_jax.xla_cpu.configure() called after JAX started: XLA_FLAGS left unchanged; '
                    'call it before the first JAX computation')
    return False
  environ['XLA_FLAGS'] = f'{current} {CPU_XLA_FLAGS}'.strip()
  return True
