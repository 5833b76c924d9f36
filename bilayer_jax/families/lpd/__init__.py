"""The latent-pose-descriptor model (LPD, Burkov et al. CVPR 2020) as a model family (docs/lpd.md).

So far: its networks (`bilayer_jax.models.lpd`), the official checkpoint key layout
(`bilayer_jax.convert.lpd_reference`) and one meta-learning and one fine-tuning iteration as the official
runner computes them (`objective.py`, `losses.py`), parity-tested against the official code.
"""
