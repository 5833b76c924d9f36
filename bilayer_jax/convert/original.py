"""Import and export of the original's run directories (docs/model.md#run-directories).

A run directory holds `args.txt` (one `key: value` per line) and `checkpoints/<epoch>_<network>.pth`
(each network's state_dict in spectral-norm form). The base run has identity_embedder,
texture_generator, keypoints_embedder, inference_generator (+ discriminator); the enhancer run adds
texture_enhancer (+ its discriminator), exactly as infer.py loads them. Reading needs no CUDA.

Variables are returned as {'generator': {collection: {network: tree}}, 'discriminator': {collection: tree}}
(`BilayerGenerator` and `Discriminator` variables).
"""

import collections
import os
import pathlib
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import errors
from bilayer_jax.convert import torch_names
from bilayer_jax.models.bilayer import BilayerGenerator
from bilayer_jax.models.config import BASE_NETWORKS, BilayerConfig, NETWORK_NAMES
from bilayer_jax.models.discriminator import Discriminator

_TEMPLATE_DIR = pathlib.Path(__file__).parent
_NO_FLOAT_KEYS = ('per_loss_weights', 'pix_loss_weights')  # lists of floats the original keeps as strings


class RunDirError(errors.UserError, ValueError):
  """A run directory is missing a file or holds something other than expected."""


# --- args.txt ---------------------------------------------------------------------------------------
def parse_args_value(key: str, text: str) -> Any:
  """Types a value as the original's `parse_args_line` does (int, float, bool or string)."""
  if text.isdigit():
    return int(text)
  if key not in _NO_FLOAT_KEYS:
    try:
      return float(text)
    except ValueError:
      pass
  return {'True': True, 'False': False}.get(text, text)


def read_args(path: os.PathLike) -> Dict[str, Any]:
  """Reads an original `args.txt` into {key: typed value}."""
  args = {}
  with open(path, 'rt') as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip('\n')
      if not line.strip():
        continue
      key, sep, value = line.partition(': ')
      if not sep and line.endswith(':'):
        key, value = line[:-1], ''
      elif not sep:
        raise RunDirError(f'{path}:{number}: expected "key: value", found {line!r}')
      args[key] = parse_args_value(key, value)
  return args


def format_args(args: Mapping[str, Any]) -> str:
  """The text train.py writes: sorted `key: value` lines."""
  return ''.join(f'{k}: {args[k]}\n' for k in sorted(args))


def paper_args(stage: str) -> Dict[str, Any]:
  """Effective arguments of the paper's base or enhancer script (template for exported runs)."""
  return read_args(_TEMPLATE_DIR / f'paper_args_{stage}.txt')


def atomic_write(path: pathlib.Path, write_fn) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  os.close(fd)
  try:
    write_fn(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# --- .pth files -------------------------------------------------------------------------------------
def load_torch_file(path: os.PathLike, error=None) -> Any:
  """torch.load of a checkpoint file on the CPU with weights_only (no code runs, no CUDA needed).

  Raises:
    `error` (default RunDirError): the file is missing or not a readable PyTorch checkpoint.
  """
  import torch  # pylint: disable=g-import-not-at-top
  error = error or RunDirError
  path = pathlib.Path(path)
  if not path.is_file():
    raise error(f'checkpoint file not found: {path}')
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises several types for corrupt/truncated files
    raise error(f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})') from e


def load_state_dict(path: os.PathLike) -> 'collections.OrderedDict[str, np.ndarray]':
  """Reads a PyTorch state_dict file on the CPU into numpy arrays (no CUDA needed)."""
  state = load_torch_file(path)
  if not isinstance(state, Mapping):
    raise RunDirError(f'{path}: expected a state_dict (a mapping of tensors), found {type(state).__name__}')
  return collections.OrderedDict((k, v.detach().cpu().numpy()) for k, v in state.items())


def save_state_dict(path: os.PathLike, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes a state_dict as torch.save does (atomically: temp file, then rename)."""
  import torch  # pylint: disable=g-import-not-at-top
  tensors = collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state_dict.items())
  atomic_write(pathlib.Path(path), lambda tmp: torch.save(tensors, tmp))


# --- config inference -------------------------------------------------------------------------------
def _infer_from_shapes(state_dicts: Mapping[str, Mapping[str, np.ndarray]]) -> Dict[str, Any]:
  """Architecture facts the checkpoints themselves state (they win over args.txt)."""
  facts: Dict[str, Any] = {}
  kp = state_dicts.get('keypoints_embedder')
  if kp is not None:
    key = 'net.mlp.0.weight_orig' if 'net.mlp.0.weight_orig' in kp else 'net.mlp.0.weight'
    if key in kp:
      in_features = kp[key].shape[1]
      harmonics = 'frequencies' in kp
      facts['pse_use_harmonic_enc'] = harmonics
      if harmonics:
        facts['pse_num_harmonics'] = int(kp['frequencies'].size)
        facts['pse_in_channels'] = in_features // (2 * facts['pse_num_harmonics'])
      else:
        facts['pse_in_channels'] = in_features
  inf = state_dicts.get('inference_generator')
  if inf is not None and 'identity_grid' in inf:
    facts['image_size'] = int(inf['identity_grid'].shape[1])
  spectral = [name for name, sd in state_dicts.items() if any(k.endswith('.weight_orig') for k in sd)]
  facts['_spectral_present'] = spectral
  return facts


def infer_config(args: Mapping[str, Any], state_dicts: Mapping[str, Mapping[str, np.ndarray]]) -> BilayerConfig:
  """BilayerConfig from the run's args.txt values, corrected by what the checkpoint shapes say."""
  merged = dict(args)
  facts = _infer_from_shapes(state_dicts)
  spectral = facts.pop('_spectral_present')
  merged.update(facts)
  base = BilayerConfig.from_args(merged)
  # Networks present decide their own spectral-norm form; absent ones keep the args' setting.
  spn = [n for n in base.spn_networks if n not in state_dicts] + spectral
  spn = [n for n in NETWORK_NAMES if n in spn]
  cfg = BilayerConfig.from_args({**merged, 'spn_networks': ', '.join(spn)})
  return cfg.validate(with_enhancer='texture_enhancer' in state_dicts)


def abstract_variables(cfg: BilayerConfig, with_enhancer: bool = True) -> Dict[str, Any]:
  """Shapes of all variables of an architecture (no computation), for templates and restoring."""
  s = cfg.image_size
  batch = {'source_imgs': jnp.zeros((1, 1, s, s, 3)), 'source_segs': jnp.zeros((1, 1, s, s, 1)),
           'source_stickmen': jnp.zeros((1, 1, s, s, 3)), 'source_poses': jnp.zeros((1, 1, 136)),
           'target_poses': jnp.zeros((1, 1, 136))}
  if cfg.pse_in_channels != 136:
    batch['source_poses'] = jnp.zeros((1, 1, cfg.pse_in_channels))
    batch['target_poses'] = jnp.zeros((1, 1, cfg.pse_in_channels))
  gen = BilayerGenerator(cfg, with_enhancer=with_enhancer)
  disc = Discriminator(cfg)
  rng = {'params': jax.random.PRNGKey(0)}
  gen_vars = jax.eval_shape(lambda: gen.init(rng, batch, pred_source_data=with_enhancer, enhance=with_enhancer))
  disc_vars = jax.eval_shape(lambda: disc.init(rng, jnp.zeros((2, s, s, 3)), jnp.zeros((2, s, s, 3))))
  return {'generator': gen_vars, 'discriminator': disc_vars}


def network_variables(variables: Mapping[str, Any], network: str) -> Dict[str, Any]:
  """One network's {collection: tree} out of the combined variables."""
  if network == 'discriminator':
    return dict(variables['discriminator'])
  gen = variables['generator']
  return {c: gen[c][network] for c in torch_names.COLLECTIONS if network in gen.get(c, {})}


# --- run directories --------------------------------------------------------------------------------
def _checkpoint_path(run_dir: pathlib.Path, epoch: Any, network: str) -> pathlib.Path:
  return run_dir / 'checkpoints' / f'{epoch}_{network}.pth'


def _read_run(run_dir: os.PathLike, epoch: Any, networks, optional=()) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  run_dir = pathlib.Path(run_dir)
  if not run_dir.is_dir():
    raise RunDirError(f'run directory not found: {run_dir}')
  args_path = run_dir / 'args.txt'
  args = read_args(args_path) if args_path.is_file() else {}
  state_dicts = {}
  for network in tuple(networks) + tuple(optional):
    path = _checkpoint_path(run_dir, epoch, network)
    if network in optional and not path.is_file():
      continue
    state_dicts[network] = load_state_dict(path)
  return args, state_dicts


def import_run(run_dir: os.PathLike, epoch: Any, enh_run_dir: Optional[os.PathLike] = None,
               enh_epoch: Optional[Any] = None) -> Tuple[BilayerConfig, Dict[str, Any], Dict[str, Any]]:
  """Imports an original base run (and optionally its enhancer run) into Flax variables.

  Args:
    run_dir: base run directory (args.txt + checkpoints/<epoch>_<network>.pth).
    epoch: the base checkpoint epoch.
    enh_run_dir: enhancer run directory (its texture_enhancer and, if present, discriminator are used).
    enh_epoch: the enhancer checkpoint epoch.

  Returns:
    (config, variables, metadata): variables as in `abstract_variables` (discriminator only if a
    discriminator checkpoint exists); metadata holds the original args of each run for export.

  Raises:
    RunDirError: missing or unreadable files. CheckpointMismatchError: keys/shapes that do not fit.
  """
  args, state_dicts = _read_run(run_dir, epoch, BASE_NETWORKS, optional=('discriminator',))
  sources = {n: str(_checkpoint_path(pathlib.Path(run_dir), epoch, n)) for n in state_dicts}
  enh_args: Dict[str, Any] = {}
  if enh_run_dir is not None:
    if enh_epoch is None:
      raise RunDirError('enh_epoch is required with enh_run_dir')
    enh_args, enh_dicts = _read_run(enh_run_dir, enh_epoch, ('texture_enhancer',), optional=('discriminator',))
    state_dicts.update(enh_dicts)
    sources.update({n: str(_checkpoint_path(pathlib.Path(enh_run_dir), enh_epoch, n)) for n in enh_dicts})
  merged_args = {**args, **{k: v for k, v in enh_args.items() if k.startswith('enh_')}}
  if enh_args:
    merged_args['spn_networks'] = enh_args.get('spn_networks', merged_args.get('spn_networks'))
  cfg = infer_config(merged_args, state_dicts)
  template = abstract_variables(cfg, with_enhancer='texture_enhancer' in state_dicts)
  gen_vars: Dict[str, Dict[str, Any]] = {}
  disc_vars: Dict[str, Any] = {}
  for network, sd in state_dicts.items():
    net_vars = torch_names.state_dict_to_variables(
        network, cfg, sd, network_variables(template, network), source=sources[network])
    if network == 'discriminator':
      disc_vars = net_vars
    else:
      for collection, tree in net_vars.items():
        gen_vars.setdefault(collection, {})[network] = tree
  variables = {'generator': gen_vars}
  if disc_vars:
    variables['discriminator'] = disc_vars
  metadata = {'base_args': args, 'enh_args': enh_args, 'sources': sources}
  return cfg, variables, metadata


def export_run(out_dir: os.PathLike, epoch: Any, cfg: BilayerConfig, variables: Mapping[str, Any],
               networks, args: Optional[Mapping[str, Any]] = None, stage: str = 'base') -> None:
  """Writes an original-layout run directory (args.txt + checkpoints/<epoch>_<network>.pth).

  Args:
    out_dir: run directory to write.
    epoch: epoch number in the checkpoint names.
    cfg: the architecture.
    variables: combined variables (see `import_run`).
    networks: which networks to write.
    args: the original arguments to write (e.g. those imported); default: the paper script's
      effective arguments with this architecture's values.
    stage: 'base' or 'enhancer' (selects the default argument template).
  """
  out_dir = pathlib.Path(out_dir)
  if args is None:
    args = {**paper_args(stage), **cfg.to_args()}
    # The original applies spectral norm by name and fails on networks its run does not build.
    built = set(args['networks_train'].replace(' ', '').split(',')) | set(
        args['networks_test'].replace(' ', '').split(','))
    args['spn_networks'] = ', '.join(n for n in cfg.spn_networks if n in built)
  for network in networks:
    sd = torch_names.variables_to_state_dict(network, cfg, jax.device_get(network_variables(variables, network)))
    save_state_dict(_checkpoint_path(out_dir, epoch, network), sd)
  atomic_write(out_dir / 'args.txt', lambda tmp: pathlib.Path(tmp).write_text(format_args(args)))


def export_runs(out_dir: os.PathLike, epoch: Any, cfg: BilayerConfig, variables: Mapping[str, Any],
                metadata: Mapping[str, Any], enh_out_dir: Optional[os.PathLike] = None, enh_epoch: Any = 1,
                source: str = 'the params') -> None:
  """Writes the base run (the base networks, and the discriminator if present) into `out_dir` and, with
  `enh_out_dir`, the enhancer run; imported parameters keep the args.txt they came with (`metadata`)."""
  networks = list(variables.get('generator', {}).get('params', {})) + (
      ['discriminator'] if 'discriminator' in variables else [])
  missing = [n for n in BASE_NETWORKS if n not in networks]
  if missing:
    raise RunDirError(f'{source}: cannot write a base run without {missing}')
  disc = ['discriminator'] if 'discriminator' in networks else []
  export_run(out_dir, epoch, cfg, variables, list(BASE_NETWORKS) + disc, args=metadata.get('base_args') or None,
             stage='base')
  if enh_out_dir:
    if 'texture_enhancer' not in networks:
      raise RunDirError(f'{source} has no texture_enhancer to write an enhancer run')
    export_run(enh_out_dir, enh_epoch, cfg, variables, ['texture_enhancer'] + disc,
               args=metadata.get('enh_args') or None, stage='enhancer')
