r"""Few-shot fine-tuning of a meta-trained FSTH model on one person (docs/fsth.md#fine-tuning).

    python -m bilayer_jax.finetune --params runs/fsth_demo/params --frames person.mp4 --num_frames 8 \
        --steps 200 --workdir runs/ft_person
    python -m bilayer_jax.finetune --params ... --frames a.jpg,b.jpg   # or a folder of photos
    python -m bilayer_jax.drive --params runs/ft_person/params --source a.jpg --driver video.mp4 --out o.mp4

N frames of the person (spread evenly over a video, or photos) are detected, cropped as the dataset is and
sketched; the embedder's mean embedding ê initialises the generator's ψ = P ê and the discriminator's
w′ = w₀ + ê; then each iteration trains on `batch_size` frames drawn at random (the reference's
finetuning_training.py: Adam 5e-5 for the generator, two 2e-4 hinge steps for the discriminator, the
run's content-loss weights). The reference never updates ψ and w′ (its optimisers predate them); the
paper trains them: `--train_adaptive`. Checkpoints go to WORKDIR/checkpoints (rerun the same command to
resume; SIGTERM saves and exits with code 75), the result to WORKDIR/params, which drive, export and the
evaluation render with ψ.
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
from bilayer_jax.families.fsth import objective
from bilayer_jax.families.fsth import setup
from bilayer_jax.inference import fsth_animator
from bilayer_jax.inference import preprocess
from bilayer_jax.inference import video
from bilayer_jax.train import checkpoints
from bilayer_jax.train import fallback

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
EXIT_PREEMPTED = 75  # as run.py: checkpoint written, rerun to resume


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to fine-tune (the defaults are the reference's)."""
  steps: int = 200
  batch_size: int = 2
  seed: int = 0
  train_adaptive: bool = False  # the paper: also train psi and w' (the reference leaves them fixed)
  checkpoint_every: int = 50
  perceptual_weights_dir: str = ''  # '' = the meta-training run's (or $BILAYER_JAX_WEIGHTS)
  progress: bool = True


def run_config_of(info: Dict[str, Any], weights_dir: str = '') -> config_lib.RunConfig:
  """The meta-training run's config recorded in a params directory (its losses and optimisers), or the
  reference's defaults for params without one (e.g. imported weights)."""
  recorded = info.get('metadata', {}).get('config')
  config = (config_lib.from_config_dict(json.loads(recorded)) if recorded else config_lib.for_family('fsth'))
  if weights_dir:
    config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, perceptual_weights_dir=weights_dir))
  return config


def _initial_state(cfg, variables, embedding, settings: Settings) -> Dict[str, Any]:
  generator = fsth_animator.network_variables(variables['generator'], 'generator')
  start = objective.finetune_init(cfg, {'generator': generator, 'discriminator': variables['discriminator']},
                                  embedding)
  return {'step': np.zeros((), np.int32), 'variables': start,
          'opt_state': objective.init_finetune_opt_state(cfg, start, settings.train_adaptive)}


def _step_fn(cfg, perceptual, train_adaptive: bool):
  def step(state, batch):
    new_vars, opt_state, metrics = objective.finetune_iteration(cfg, state['variables'], state['opt_state'],
                                                                perceptual, batch, train_adaptive)
    scalars = {k: metrics[k] for k in ('loss_g', 'loss_cnt', 'loss_adv', 'loss_d1')}
    return {'step': state['step'] + 1, 'variables': new_vars, 'opt_state': opt_state}, scalars
  return jax.jit(step, donate_argnums=(0,))


def _batch(frames: np.ndarray, sketches: np.ndarray, settings: Settings, step: int) -> Dict[str, np.ndarray]:
  """`batch_size` frames drawn at random; the draw is a function of (seed, step), so a resumed run sees
  the batches an uninterrupted one does."""
  index = np.random.default_rng([settings.seed, step]).integers(0, len(frames), settings.batch_size)
  return {'frame': frames[index], 'landmarks': sketches[index]}


def _restore(manager, state):
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)
  restored, step = fallback.restore_latest_readable(manager, abstract)
  return (restored, step) if restored is not None else (state, None)


def finetune(params_dir: str, sources: Sequence[preprocess.SourceInputs], workdir: str,
             settings: Settings = Settings()) -> Dict[str, Any]:
  """Fine-tunes an FSTH params directory on preprocessed frames of one person; writes WORKDIR/params.

  Returns {'steps', 'start_step', 'losses' (per step), 'params' (the output directory), 'preempted'}.
  Raises:
    model_io.ParamsDirError: the params are not of the fsth family or lack a network.
  """
  cfg_model, variables, info = model_io.load_params(params_dir)
  if info['family'] != 'fsth' or info.get('metadata', {}).get('finetuned'):
    raise model_io.ParamsDirError(f'{params_dir}: fine-tuning starts from meta-trained fsth params (this is '
                                  f'{"a fine-tuned model" if info["family"] == "fsth" else info["family"]})')
  config = run_config_of(info, settings.perceptual_weights_dir)
  cfg = setup.objective_config(dataclasses.replace(config, model=cfg_model))
  perceptual = jax.device_put(setup.content_params(config, cfg))
  animator = fsth_animator.FSTHAnimator(cfg_model, variables['generator'])
  embedding = animator.init_avatar(list(sources)).embedding
  frames = np.concatenate([(s.imgs[0] + 1) / 2 for s in sources]).astype(np.float32)
  sketches = (animator.sketches(np.concatenate([s.poses[0] for s in sources])) + 1) / 2
  workdir_path = pathlib.Path(workdir)
  manager = checkpoints.make_manager(str(workdir_path), keep=2)
  guard = checkpoints.PreemptionGuard()
  try:
    state, restored_step = _restore(manager, _initial_state(cfg, variables, embedding, settings))
    summary = _train(manager, guard, _step_fn(cfg, perceptual, settings.train_adaptive), state, frames, sketches,
                     settings)
    manager.wait_until_finished()
  finally:
    manager.close()
    guard.close()
  summary['start_step'] = restored_step or 0
  if not summary['preempted']:
    summary['params'] = str(_write(workdir_path / 'params', cfg_model, variables, summary['state'], params_dir,
                                   len(sources), settings))
  del summary['state']
  return summary


def _train(manager, guard, step_fn, state, frames, sketches, settings: Settings) -> Dict[str, Any]:
  start = int(state['step'])
  losses, preempted = {}, False
  bar = tqdm.auto.tqdm(total=settings.steps, initial=start, desc='fine-tuning', unit='step',
                       disable=not settings.progress)
  for step in range(start, settings.steps):
    state, scalars = step_fn(state, _batch(frames, sketches, settings, step))
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


def _write(out: pathlib.Path, cfg_model, variables, state, params_dir: str, num_frames: int,
           settings: Settings) -> pathlib.Path:
  """A params directory: the meta-trained embedder with the fine-tuned generator and discriminator."""
  tuned = jax.device_get(state['variables'])
  generator_side = {c: {**tree, **({'generator': tuned['generator'][c]} if c in tuned['generator'] else {})}
                    for c, tree in variables['generator'].items()}
  metadata = {'finetuned': True, 'finetuned_from': str(params_dir), 'num_frames': num_frames,
              'steps': int(state['step']), 'train_adaptive': settings.train_adaptive,
              'trained_by': 'bilayer_jax.finetune'}
  return model_io.replace_params(out, cfg_model, {'generator': generator_side,
                                                  'discriminator': tuned['discriminator']}, metadata)


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


def read_sources(spec: str, num_frames: int, image_size: int, landmarks: str = 'auto') -> List[Any]:
  """N preprocessed frames of one person from photos or a video (evenly spread; frames without a face are
  skipped and counted in the log). Raises preprocess.NoFaceError when none has a face."""
  preprocessor = preprocess.FacePreprocessor(image_size, landmarks)
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
  flags.DEFINE_string('params', None, 'Meta-trained fsth params directory (a run\'s WORKDIR/params).')
  flags.DEFINE_string('frames', None, 'The person: a video, a folder of photos, or photos separated by commas.')
  flags.DEFINE_string('workdir', None, 'Checkpoints and the fine-tuned params (WORKDIR/params).')
  flags.DEFINE_integer('num_frames', 8, 'Frames of the person to fine-tune on (the paper: 1, 8 or 32).')
  flags.DEFINE_integer('steps', Settings.steps, 'Fine-tuning iterations.')
  flags.DEFINE_integer('batch_size', Settings.batch_size, 'Frames per iteration (the reference: 2).')
  flags.DEFINE_integer('seed', 0, 'Seed of the frame draws.')
  flags.DEFINE_bool('train_adaptive', False, 'Also train psi and w\' (the paper; the reference leaves them fixed).')
  flags.DEFINE_integer('checkpoint_every', Settings.checkpoint_every, 'Steps between checkpoints.')
  flags.DEFINE_string('perceptual_weights_dir', '', 'Folder of the content-loss weights (default: the run\'s).')
  flags.DEFINE_string('landmarks', 'auto', 'Landmark backend for the frames (auto, dlib, face_alignment).')


def main(argv) -> Optional[int]:
  del argv
  xla_cpu.configure()
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; the bar and the summary say enough
  f = flags.FLAGS
  for name in ('num_frames', 'steps', 'batch_size', 'checkpoint_every'):  # before any slow work
    if getattr(f, name) < 1:
      raise errors.InvalidArgumentError(f'--{name}={getattr(f, name)}: expected an integer >= 1')
  cfg_model, _ = model_io.load_config(f.params)
  sources = read_sources(f.frames, f.num_frames, cfg_model.image_size, f.landmarks)
  settings = Settings(steps=f.steps, batch_size=f.batch_size, seed=f.seed, train_adaptive=f.train_adaptive,
                      checkpoint_every=f.checkpoint_every, perceptual_weights_dir=f.perceptual_weights_dir)
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
