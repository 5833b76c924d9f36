"""The few-shot talking-head model (FSTH) as a model family, under construction: its meta-learning objective
(`objective.py`, parity-tested against the reference). The family entry (training setup, fine-tuning, the
animator) comes next (docs/fsth.md)."""
