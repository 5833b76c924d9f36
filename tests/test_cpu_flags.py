"""The package turns XLA:CPU's YNNPACK fusions off at import (bilayer_jax.CPU_XLA_FLAGS), unless told otherwise."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Imports jax first and the package second (backends are created lazily, so the flag still applies), then
# compiles a 64-channel conv and reports the device count and whether XLA used a YNN fusion for the conv.
PROBE = """
import jax, numpy as np
import bilayer_jax
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
x, w = np.ones((1, 64, 64, 64), np.float32), np.ones((3, 3, 64, 64), np.float32)
print(jax.device_count(), 'ynn' in jax.jit(conv).lower(x, w).compile().as_text())
"""


def _probe(xla_flags):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if xla_flags is not None:
    env['XLA_FLAGS'] = xla_flags
  proc = subprocess.run([sys.executable, '-c', PROBE], cwd=REPO, env={**env, 'JAX_PLATFORMS': 'cpu'},
                        capture_output=True, text=True, check=True)
  return proc.stdout.split()[-2:]


def test_import_turns_ynn_fusions_off_and_keeps_other_flags():
  assert _probe('--xla_force_host_platform_device_count=2') == ['2', 'False']


def test_explicit_ynn_choice_in_xla_flags_wins():
  assert _probe('--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION')[1] == 'True'
