"""XLA:CPU's YNNPACK fusions are turned off by an explicit, guarded call (bilayer_jax.xla_cpu.configure),
never by importing the package; an explicit choice in XLA_FLAGS wins."""

import os
import subprocess
import sys

from bilayer_jax import xla_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Optionally calls configure(), then compiles a 64-channel conv and reports the device count, whether XLA
# used a YNN fusion for the conv, and what configure() returned.
PROBE = """
import sys
import bilayer_jax
from bilayer_jax import xla_cpu
configured = xla_cpu.configure() if sys.argv[1] == 'configure' else None
import jax, numpy as np
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
x, w = np.ones((1, 64, 64, 64), np.float32), np.ones((3, 3, 64, 64), np.float32)
print(jax.device_count(), 'ynn' in jax.jit(conv).lower(x, w).compile().as_text(), configured)
"""


def _probe(xla_flags, mode='configure'):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if xla_flags is not None:
    env['XLA_FLAGS'] = xla_flags
  proc = subprocess.run([sys.executable, '-c', PROBE, mode], cwd=REPO, env={**env, 'JAX_PLATFORMS': 'cpu'},
                        capture_output=True, text=True, check=True)
  return proc.stdout.split()[-3:]


def test_configure_turns_ynn_fusions_off_and_keeps_other_flags():
  assert _probe('--xla_force_host_platform_device_count=2') == ['2', 'False', 'True']


def test_importing_the_package_changes_nothing():
  assert _probe(None, mode='import only')[1:] == ['True', 'None']


def test_explicit_ynn_choice_in_xla_flags_wins():
  assert _probe('--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION')[1:] == [
      'True', 'False']


def test_guards_unknown_jaxlib_and_a_started_backend(monkeypatch):
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  monkeypatch.setattr(xla_cpu.importlib.metadata, 'version', lambda name: '0.11.0')
  assert not xla_cpu.configure(environ) and xla_cpu.FLAG not in environ['XLA_FLAGS']
  monkeypatch.undo()
  # This test process has used JAX already (conftest configured it before): too late to change anything.
  import jax  # pylint: disable=g-import-not-at-top
  jax.numpy.zeros(1).block_until_ready()
  environ = {}
  assert not xla_cpu.configure(environ) and environ == {}
