"""bilayer_jax: JAX/Flax reimplementation of the bi-layer one-shot head-avatar model.

Zakharov et al., "Fast Bi-layer Neural Synthesis of One-Shot Realistic Head Avatars", ECCV 2020.
Subpackages: `models` (the six networks and their composition), `convert` (original PyTorch
checkpoint I/O), `data` (input pipeline), `train`, `inference`, `evaluators`, `tools` (command-line tools).

Importing the package has no side effects; `bilayer_jax.xla_cpu.configure()` is the XLA:CPU flag choice
the entry points make (call it before the first JAX computation to get the same speed from a notebook).
"""

__version__ = "0.1.0"
