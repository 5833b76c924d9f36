"""bilayer_jax: JAX/Flax reimplementation of the bi-layer one-shot head-avatar model.

Zakharov et al., "Fast Bi-layer Neural Synthesis of One-Shot Realistic Head Avatars", ECCV 2020.
Subpackages: `models` (the six networks and their composition), `convert` (original PyTorch
checkpoint I/O), `data` (input pipeline), `tools` (command-line tools).

Importing the package turns XLA:CPU's YNNPACK library fusions off (see `CPU_XLA_FLAGS`).
"""

import os

__version__ = "0.1.0"

# jaxlib 0.10's XLA:CPU hands convolutions, dots, elementwise ops and reductions to YNNPACK fusions by
# default. On x86-64 CPUs they are much slower than the Eigen kernels they replace for this model, in
# training and in inference (docs/benchmarks.md#xla-cpu-ynnpack-fusions). The option only affects CPU
# compiles, must be in XLA_FLAGS before the first backend is created (hence at package import), and is
# left alone when XLA_FLAGS already chooses the YNN fusion types.
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,'
                 '-LIBRARY_FUSION_TYPE_DOT,-LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,-LIBRARY_FUSION_TYPE_ELTWISE,'
                 '-LIBRARY_FUSION_TYPE_REDUCE')
if 'xla_cpu_experimental_ynn_fusion_type' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_XLA_FLAGS}".strip()
