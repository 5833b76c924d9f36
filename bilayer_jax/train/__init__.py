"""The shared trainer: sharding, orbax checkpoints, config checks, the loop (`loop`); a model family
(`bilayer_jax.families`) supplies the step.

`enable_compilation_cache` lives here, free of heavy imports, because run.py must call it before
`jax.distributed.initialize()` (nothing may touch a JAX backend before that).
"""

import os


def enable_compilation_cache() -> None:
  """Turns on JAX's persistent compilation cache (XLA compiles of the train step take minutes on a CPU).

  The directory is $BILAYER_JAX_COMPILATION_CACHE (empty: off), by default ~/.cache/bilayer_jax/jax_cache;
  runs, resumes and notebook sessions with the same shapes then reuse each other's executables.
  """
  import jax  # pylint: disable=g-import-not-at-top
  cache = os.environ.get('BILAYER_JAX_COMPILATION_CACHE',
                         os.path.join(os.path.expanduser('~'), '.cache', 'bilayer_jax', 'jax_cache'))
  if cache:
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 2.0)
