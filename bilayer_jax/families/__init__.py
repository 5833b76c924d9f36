"""Model families: the registry the trainer, the evaluation, drive, export and the notebooks look models up in.

    family = families.get(config.family)       # ConfigError naming the known ones when unknown
    animator = families.animator_from_params('runs/demo/enhancer/params')  # the family config.json names

A new family (FSTH, LPD) is a subpackage like `bilayer/` that builds a `base.ModelFamily` from its
networks, objective, evaluation forward and converters, plus one line in `FAMILIES` and its architecture
dataclass in `bilayer_jax.config.MODEL_CONFIGS` (the config's `model` section; a test checks the two agree).
"""

from typing import Dict

from bilayer_jax import config as config_lib
from bilayer_jax import model_io
from bilayer_jax.families import base
from bilayer_jax.families import bilayer
from bilayer_jax.families import fsth
from bilayer_jax.families import lpd

FAMILIES: Dict[str, base.ModelFamily] = {family.name: family for family in (bilayer.FAMILY, fsth.FAMILY, lpd.FAMILY)}


def get(name: str) -> base.ModelFamily:
  """The family called `name` (what `config.family` and a params directory's config.json say)."""
  if name not in FAMILIES:
    raise config_lib.ConfigError(f'config.family={name!r}: expected one of {", ".join(sorted(FAMILIES))}')
  return FAMILIES[name]


def animator_from_params(params_dir: str, **kwargs):
  """The animator of a params directory, built by the family its config.json names."""
  _, info = model_io.load_config(params_dir)
  return get(info['family']).animator_from_params(params_dir, **kwargs)
