"""Params directories: a model's variables (orbax) plus its architecture (JSON), written atomically.

Layout of DIR:
  DIR/variables/    orbax checkpoint of {'generator': ..., 'discriminator': ...} variables
  DIR/config.json   {'format': ..., 'family': ..., 'model_config': {...}, 'networks': [...], 'metadata': {...}}
This is what `bilayer_jax.import_original` writes and what training (`init_from`) and inference load.
`family` names the model family (`bilayer_jax.families`) and `model_config` its architecture dataclass.
Directories of the first format (before families: 'bilayer_config', no 'family') still load, as bi-layer.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from bilayer_jax import config as config_lib
from bilayer_jax import errors

FORMAT = 'bilayer_jax.params/2'
_FIRST_FORMAT = 'bilayer_jax.params/1'  # bi-layer only: 'bilayer_config' instead of 'family' + 'model_config'


class ParamsDirError(errors.UserError, ValueError):
  """A params directory is missing, incomplete or of another format."""


def networks_in(variables: Mapping[str, Any]) -> list:
  """Names of the networks present in combined variables (the generator side's, then the discriminator)."""
  return list(variables.get('generator', {}).get('params', {})) + (
      ['discriminator'] if 'discriminator' in variables else [])


def family_of(cfg: Any) -> str:
  """The model family whose architecture dataclass `cfg` is."""
  for name, config_type in config_lib.MODEL_CONFIGS.items():
    if isinstance(cfg, config_type):
      return name
  raise TypeError(f'{type(cfg).__name__} is the architecture of no model family')


def checked_array(state: Mapping[str, Any], key: str, shape: Tuple[int, ...], problems: list):
  """state[key] as float32 if present with `shape`; otherwise appends a message naming the key to `problems`
  and returns None (callers collect every problem of a weight file before raising)."""
  if key not in state:
    problems.append(f'missing key {key!r} (expected shape {shape})')
    return None
  if tuple(np.shape(state[key])) != tuple(shape):
    problems.append(f'key {key!r}: expected shape {tuple(shape)}, found {tuple(np.shape(state[key]))}')
    return None
  return np.asarray(state[key], np.float32)


def check_shapes(expected: Any, found: Any, where: str) -> None:
  """Raises ParamsDirError naming the first key whose shape differs or that is missing/extra (e.g. params
  made for another architecture than the config)."""
  exp = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(expected)[0]}
  got = {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(found)[0]}
  for key in sorted(set(exp) | set(got)):
    if exp.get(key) != got.get(key):
      raise ParamsDirError(f'{where}{key}: expected shape {exp.get(key, "absent")}, found {got.get(key, "absent")} '
                           '(the params were made for another architecture than this config)')


def _this_process_checkpointer() -> ocp.StandardCheckpointer:
  """A checkpointer that involves only the calling process (a params directory holds host arrays and is
  written by one process; the default would wait at barriers for every process of a multi-host job)."""
  me = jax.process_index()
  return ocp.StandardCheckpointer(
      multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))


def save_params(directory: os.PathLike, cfg: Any, variables: Mapping[str, Any],
                metadata: Optional[Mapping[str, Any]] = None) -> pathlib.Path:
  """Writes a params directory; the directory only appears once complete (temp dir, then rename)."""
  directory = pathlib.Path(directory).absolute()
  if directory.exists():
    raise ParamsDirError(f'{directory} already exists; choose a new output directory')
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f'.{directory.name}.tmp-'))
  try:
    checkpointer = _this_process_checkpointer()
    checkpointer.save(tmp / 'variables', jax.device_get(dict(variables)))
    checkpointer.wait_until_finished()
    info = {'format': FORMAT, 'family': family_of(cfg), 'model_config': dataclasses.asdict(cfg),
            'networks': networks_in(variables), 'metadata': dict(metadata or {})}
    (tmp / 'config.json').write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
    os.replace(tmp, directory)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return directory


def replace_params(directory: os.PathLike, cfg: Any, variables: Mapping[str, Any],
                   metadata: Optional[Mapping[str, Any]] = None) -> pathlib.Path:
  """Writes a params directory over an existing one: the new one is complete before the old one goes
  (DIR.new is written, DIR moved to DIR.old, DIR.new to DIR, DIR.old removed)."""
  final = pathlib.Path(directory).absolute()
  staging, old = final.with_name(final.name + '.new'), final.with_name(final.name + '.old')
  if old.exists():  # an earlier replacement was interrupted: DIR.old is complete, keep it if DIR is gone
    if final.exists():
      shutil.rmtree(old)
    else:
      os.replace(old, final)
  if staging.exists():
    shutil.rmtree(staging)
  save_params(staging, cfg, variables, metadata)
  if final.exists():
    os.replace(final, old)
  os.replace(staging, final)
  if old.exists():
    shutil.rmtree(old)
  return final


def load_config(directory: os.PathLike) -> Tuple[Any, Dict[str, Any]]:
  """Reads only the architecture (the family's dataclass) and the info of a params directory; info['family']
  names the family."""
  path = pathlib.Path(directory) / 'config.json'
  if not path.is_file():
    raise ParamsDirError(f'{directory} is not a bilayer_jax params directory (no config.json)')
  info = json.loads(path.read_text())
  if info.get('format') == _FIRST_FORMAT and 'bilayer_config' in info:
    info = {k: v for k, v in info.items() if k != 'bilayer_config'} | {
        'format': FORMAT, 'family': 'bilayer', 'model_config': info['bilayer_config']}
  if info.get('format') != FORMAT or 'family' not in info or 'model_config' not in info:
    raise ParamsDirError(f'{path}: format {info.get("format")!r} with keys {sorted(info)}, expected {FORMAT!r} '
                         'with family and model_config')
  try:
    return config_lib.model_config_from_dict(info['family'], info['model_config']), info
  except config_lib.ConfigError as e:
    raise ParamsDirError(f'{path}: {e}') from e


def load_params(directory: os.PathLike) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
  """Returns (config, variables, info) of a params directory (arrays on the default device)."""
  cfg, info = load_config(directory)
  path = pathlib.Path(directory).absolute() / 'variables'
  if not path.is_dir():
    raise ParamsDirError(f'{directory}: variables/ missing (incomplete params directory)')
  variables = _this_process_checkpointer().restore(path)
  return cfg, variables, info
