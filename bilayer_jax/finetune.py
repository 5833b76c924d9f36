r"""Per-person fine-tuning of a meta-trained FSTH or LPD model (docs/fsth.md#fine-tuning, docs/lpd.md#training).

    python -m bilayer_jax.finetune --params runs/fsth_demo/params --frames person.mp4 --num_frames 8 \
        --steps 200 --workdir runs/ft_person
    python -m bilayer_jax.finetune --params ... --frames a.jpg,b.jpg   # or a folder of photos
    python -m bilayer_jax.drive --params runs/ft_person/params --source a.jpg --driver video.mp4 --out o.mp4

N frames of the person (spread evenly over a video, or photos) are detected and cropped as the dataset is;
the params directory's family fine-tunes on them (`bilayer_jax.families.<family>.finetuning`):
* fsth: the embedder's mean embedding ê initialises the generator's ψ = P ê and the discriminator's
  w′ = w₀ + ê, then the reference's fine-tuning iterations on `batch_size` (2) frames drawn at random;
  `--train_adaptive` also trains ψ and w′ (the paper; the reference leaves them fixed);
* lpd: the EMA embedder's mean identity vector initialises the generator's own identity vector and the
  discriminator's one-row projection table, then the official fine-tuning iterations (RAdam, EMA 0.972) on
  batches of min(N, 8) of the frames, each pose frame augmented.
200 steps by default (lpd: the official README runs about 125 for 1 image to 230 for > 30, its configs 560).
Checkpoints go to WORKDIR/checkpoints (rerun the same command to resume; SIGTERM saves and exits with code
75), the result to WORKDIR/params (metadata `finetuned`), which drive, export and the evaluation render with
the person's fine-tuned parameters (the photos given to drive then only give the pose before the first face).
"""

import dataclasses
import json
import pathlib
from typing import Any, Dict, List, Optional, Sequence

from absl import flags
from absl import logging
import jax
import numpy as np
import tqdm.auto

from bilayer_jax import cli
from bilayer_jax import config as config_lib
from bilayer_jax import errors
from bilayer_jax import model_io
from bilayer_jax import xla_cpu
from bilayer_jax.families.fsth import finetuning as fsth_finetuning
from bilayer_jax.families.lpd import finetuning as lpd_finetuning
from bilayer_jax.inference import preprocess
from bilayer_jax.inference import video
from bilayer_jax.train import checkpoints
from bilayer_jax.train import fallback

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
EXIT_PREEMPTED = 75  # as run.py: checkpoint written, rerun to resume
FINETUNERS = {'fsth': fsth_finetuning.Finetuner, 'lpd': lpd_finetuning.Finetuner}


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to fine-tune (the defaults are the reference's)."""
  steps: int = 200
  batch_size: Optional[int] = None  # None: the family's (fsth 2 as the reference, lpd min(N, 8) as the official)
  seed: int = 0
  train_adaptive: bool = False  # fsth only, the paper: also train psi and w' (the reference leaves them fixed)
  checkpoint_every: int = 50
  perceptual_weights_dir: str = ''  # '' = the meta-training run's (or $BILAYER_JAX_WEIGHTS)
  progress: bool = True


def check_settings(family: str, settings: Settings) -> None:
  """Raises errors.InvalidArgumentError for a setting the family does not have."""
  if settings.train_adaptive and family != 'fsth':
    raise errors.InvalidArgumentError(f'--train_adaptive trains FSTH\'s psi and w\'; the {family} family has '
                                      'neither (lpd always trains the generator\'s identity vector)')


def run_config_of(info: Dict[str, Any], weights_dir: str = '') -> config_lib.RunConfig:
  """The meta-training run's config recorded in a params directory (its losses and optimisers), or the
  family's defaults for params without one (e.g. imported weights)."""
  recorded = info.get('metadata', {}).get('config')
  config = (config_lib.from_config_dict(json.loads(recorded)) if recorded else config_lib.for_family(info['family']))
  if weights_dir:
    config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, perceptual_weights_dir=weights_dir))
  return config


def _restore(manager, state):
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)
  restored, step = fallback.restore_latest_readable(manager, abstract)
  return (restored, step) if restored is not None else (state, None)


def finetune(params_dir: str, sources: Sequence[preprocess.SourceInputs], workdir: str,
             settings: Settings = Settings()) -> Dict[str, Any]:
  """Fine-tunes an FSTH or LPD params directory on preprocessed frames of one person; writes WORKDIR/params.

  Returns {'steps', 'start_step', 'losses' (per step), 'params' (the output directory), 'preempted'}.
  Raises:
    model_io.ParamsDirError: the params are of another family, already fine-tuned, or lack a network.
    errors.InvalidArgumentError: a setting of another family (train_adaptive for lpd).
  """
  cfg_model, variables, info = model_io.load_params(params_dir)
  family = info['family']
  if family not in FINETUNERS or info.get('metadata', {}).get('finetuned'):
    known = family in FINETUNERS
    raise model_io.ParamsDirError(f'{params_dir}: fine-tuning starts from meta-trained '
                                  f'{family if known else " or ".join(FINETUNERS)} params (this is '
                                  f'{"a fine-tuned model" if known else family})')
  check_settings(family, settings)
  tuner = FINETUNERS[family](cfg_model, variables, run_config_of(info, settings.perceptual_weights_dir),
                             list(sources), settings)
  workdir_path = pathlib.Path(workdir)
  manager = checkpoints.make_manager(str(workdir_path), keep=2)
  guard = checkpoints.PreemptionGuard()
  try:
    state, restored_step = _restore(manager, tuner.initial_state())
    summary = _train(manager, guard, tuner, state, settings)
    manager.wait_until_finished()
  finally:
    manager.close()
    guard.close()
  summary['start_step'] = restored_step or 0
  if not summary['preempted']:
    tuned, family_metadata = tuner.params_variables(summary['state'])
    metadata = {'finetuned': True, 'finetuned_from': str(params_dir), 'num_frames': len(sources),
                'steps': int(summary['state']['step']), 'trained_by': 'bilayer_jax.finetune',
                'crop_style': info.get('metadata', {}).get('crop_style', 'original'), **family_metadata}
    summary['params'] = str(model_io.replace_params(workdir_path / 'params', cfg_model, tuned, metadata))
  del summary['state']
  return summary


def _train(manager, guard, tuner, state, settings: Settings) -> Dict[str, Any]:
  start = int(state['step'])
  losses, preempted = {}, False
  bar = tqdm.auto.tqdm(total=settings.steps, initial=start, desc='fine-tuning', unit='step',
                       disable=not settings.progress)
  for step in range(start, settings.steps):
    state, scalars = tuner.step(state, tuner.batch(step))
    scalars = {k: float(v) for k, v in jax.device_get(scalars).items()}
    if not all(np.isfinite(v) for v in scalars.values()):
      raise FloatingPointError(f'fine-tuning step {step + 1}: non-finite losses {scalars}; lower the learning '
                               'rates (the last checkpoint stays valid)')
    losses[step + 1] = scalars
    bar.update(1)
    bar.set_postfix(loss_g=f'{scalars["loss_g"]:.3g}')
    preempted = guard.should_stop(manager, step + 1)
    if preempted or (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
      checkpoints.save(manager, step + 1, state, {'step': step + 1}, force=True)
    if preempted:
      logging.warning('preempted at fine-tuning step %d: checkpoint written, exiting', step + 1)
      break
  bar.close()
  return {'steps': settings.steps, 'losses': losses, 'preempted': preempted, 'state': state}


def _paths(spec: str) -> List[pathlib.Path]:
  """Photos: a comma-separated list or a folder; anything else is a video."""
  if ',' in spec:
    return [pathlib.Path(p.strip()) for p in spec.split(',') if p.strip()]
  path = pathlib.Path(spec)
  if path.is_dir():
    photos = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
      raise errors.InvalidArgumentError(f'--frames {spec}: the folder has no {"/".join(IMAGE_SUFFIXES)} photos')
    return photos
  return [path]


def read_sources(spec: str, num_frames: int, image_size: int, landmarks: str = 'auto',
                 crop_style: str = 'original') -> List[Any]:
  """N preprocessed frames of one person from photos or a video (evenly spread; frames without a face are
  skipped and counted in the log), cropped by the meta-training data's `crop_style`. Raises
  preprocess.NoFaceError when none has a face."""
  preprocessor = preprocess.FacePreprocessor(image_size, landmarks, crop_style=crop_style)
  paths = _paths(spec)
  if len(paths) == 1 and paths[0].suffix.lower() not in IMAGE_SUFFIXES:
    frames = list(video.read_video(paths[0]))
    picks = np.linspace(0, len(frames) - 1, min(num_frames, len(frames))).round().astype(int)
    named = [(frames[i], f'{paths[0]} frame {i}') for i in sorted(set(picks))]
  else:
    named = [(video.read_image(p), str(p)) for p in paths[:num_frames]]
  sources = []
  for image, name in named:
    try:
      sources.append(preprocessor.source(image, name=name))
    except preprocess.NoFaceError as e:
      logging.warning('skipped: %s', e)
  if not sources:
    raise preprocess.NoFaceError(f'--frames {spec}: no face in any of the {len(named)} frames read')
  return sources


def _define_flags() -> None:
  flags.DEFINE_string('params', None, 'Meta-trained fsth or lpd params directory (a run\'s WORKDIR/params).')
  flags.DEFINE_string('frames', None, 'The person: a video, a folder of photos, or photos separated by commas.')
  flags.DEFINE_string('workdir', None, 'Checkpoints and the fine-tuned params (WORKDIR/params).')
  flags.DEFINE_integer('num_frames', 8, 'Frames of the person to fine-tune on (the paper: 1, 8 or 32).')
  flags.DEFINE_integer('steps', Settings.steps, 'Fine-tuning iterations.')
  flags.DEFINE_integer('batch_size', None, 'Frames per iteration (default: fsth 2 as the reference, lpd min(N, 8) '
                       'as the official).')
  flags.DEFINE_integer('seed', 0, 'Seed of the frame draws (lpd: also of the augmentations and dropout).')
  flags.DEFINE_bool('train_adaptive', False, 'fsth only: also train psi and w\' (the paper; the reference leaves '
                    'them fixed).')
  flags.DEFINE_integer('checkpoint_every', Settings.checkpoint_every, 'Steps between checkpoints.')
  flags.DEFINE_string('perceptual_weights_dir', '', 'Folder of the content-loss weights (default: the run\'s).')
  flags.DEFINE_string('landmarks', 'auto', 'Landmark backend for the frames (auto, dlib, face_alignment).')


def main(argv) -> Optional[int]:
  del argv
  xla_cpu.configure()
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; the bar and the summary say enough
  f = flags.FLAGS
  for name in ('num_frames', 'steps', 'batch_size', 'checkpoint_every'):  # before any slow work
    if getattr(f, name) is not None and getattr(f, name) < 1:
      raise errors.InvalidArgumentError(f'--{name}={getattr(f, name)}: expected an integer >= 1')
  settings = Settings(steps=f.steps, batch_size=f.batch_size, seed=f.seed, train_adaptive=f.train_adaptive,
                      checkpoint_every=f.checkpoint_every, perceptual_weights_dir=f.perceptual_weights_dir)
  cfg_model, info = model_io.load_config(f.params)
  check_settings(info['family'], settings)
  sources = read_sources(f.frames, f.num_frames, cfg_model.image_size, f.landmarks,
                         info.get('metadata', {}).get('crop_style', 'original'))
  summary = finetune(f.params, sources, f.workdir, settings)
  if summary['preempted']:
    print(f'preempted: checkpoint in {f.workdir}/checkpoints; rerun the same command to resume')
    return EXIT_PREEMPTED
  last = summary['losses'].get(settings.steps, {})
  print(f'fine-tuned on {len(sources)} frames for {settings.steps} steps (from step {summary["start_step"]}): '
        f'{summary["params"]}; last generator loss {last.get("loss_g", float("nan")):.4g}')
  return None


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['params', 'frames', 'workdir'])
  cli.run(main)
