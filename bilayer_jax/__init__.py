"""bilayer_jax: JAX/Flax reimplementation of the bi-layer one-shot head-avatar model.

Zakharov et al., "Fast Bi-layer Neural Synthesis of One-Shot Realistic Head Avatars", ECCV 2020.
Subpackages: `models` (the six networks and their composition), `convert` (original PyTorch
checkpoint I/O), `data` (input pipeline), `tools` (command-line tools).
"""

__version__ = "0.1.0"
