r"""Drive a photo with a video: the one-shot avatar of --source, animated by the poses of --driver.

    python -m bilayer_jax.drive --params runs/demo/enhancer/params --source photo.jpg --driver video.mp4 \
        --out out.mp4 [--side_by_side] [--enhance|--noenhance] [--background 255,255,255|bg.jpg]

--params is a bilayer_jax params directory: WORKDIR/<stage>/params of a training run, or official weights
imported with `python -m bilayer_jax.tools.import_torch`. Writes an H.264 mp4 (only once complete) and
prints a per-stage timing summary: source detection + avatar init (once), driver detection and the
per-frame render (per frame). Driver frames without a face reuse the last pose.
"""

import time

from absl import app
from absl import flags
import numpy as np
import tqdm.auto

from bilayer_jax.inference import animator as animator_lib
from bilayer_jax.inference import preprocess
from bilayer_jax.inference import video
from data_prep import images

FLAGS = flags.FLAGS


def _define_flags():
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string('params', None, 'bilayer_jax params directory.')
  flags.DEFINE_string('source', None, 'Source photo (any size; one face).')
  flags.DEFINE_string('driver', None, 'Driving video (mp4 or anything FFmpeg decodes).')
  flags.DEFINE_string('out', None, 'Output .mp4.')
  flags.DEFINE_bool('side_by_side', False, 'Write [source crop | driver crop | result] per frame.')
  flags.DEFINE_bool('enhance', None, 'Run the texture enhancer at init (default: if the params have one).')
  flags.DEFINE_string('background', '255,255,255', 'Background: "R,G,B" or an image file.')
  flags.DEFINE_string('landmarks', 'auto', 'Landmark backend: auto (face_alignment if its weights are '
                      'present, else dlib), dlib, face_alignment.')
  flags.DEFINE_string('segmentation', 'mediapipe_selfie', 'Segmentation backend for the source mask.')
  flags.DEFINE_integer('display_size', 256, 'Side of each panel in the output video (bicubic resize).')
  flags.DEFINE_integer('max_frames', None, 'Stop after this many driver frames.')
  flags.DEFINE_integer('chunk', 8, 'Frames per render call.')


def parse_background(value: str):
  """'R,G,B' -> colour tuple; anything else is an image path."""
  parts = value.split(',')
  if len(parts) == 3 and all(p.strip().isdigit() for p in parts):
    colour = tuple(int(p) for p in parts)
    if any(c > 255 for c in colour):
      raise ValueError(f'--background {value}: colour values must be 0-255')
    return colour
  return video.read_image(value)


def drive(params: str, source: str, driver: str, out: str, *, side_by_side: bool = False, enhance=None,
          background='255,255,255', landmarks: str = 'auto', segmentation: str = 'mediapipe_selfie',
          display_size: int = 256, max_frames=None, chunk: int = 8, progress: bool = True) -> dict:
  """Runs the whole drive job; returns the timing summary (seconds) and counts."""
  timings = {}
  start = time.perf_counter()
  anim = animator_lib.Animator.from_params(params, chunk=chunk)
  anim.preprocessor = preprocess.FacePreprocessor(anim.cfg.image_size, landmarks, segmentation)
  bg = parse_background(background) if isinstance(background, str) else background
  timings['load'] = time.perf_counter() - start

  photo = video.read_image(source)
  start = time.perf_counter()
  inputs = anim.preprocessor.source(photo, name=source)
  timings['source detect+crop+mask'] = time.perf_counter() - start
  start = time.perf_counter()
  avatar = anim.init_avatar(inputs, enhance=enhance)
  timings['avatar init (incl. compile)'] = time.perf_counter() - start
  start = time.perf_counter()
  anim.render(avatar, inputs.poses.reshape(1, -1))  # compiles the per-frame function once
  timings['render compile'] = time.perf_counter() - start

  fps, total = video.probe_video(driver)
  if max_frames is not None:
    total = min(total or max_frames, max_frames)
  panel = lambda img: images.resize_bicubic(np.ascontiguousarray(img), display_size)
  source_panel = panel(inputs.crop)
  blank = np.zeros_like(source_panel)
  loop_timings = {}
  stats = {'frames': 0, 'frames_without_face': 0}

  def frames():
    bar = tqdm.auto.tqdm(total=total, unit='frame', disable=not progress)  # a widget in notebooks
    for frame, crop, out_frame in anim.drive(avatar, video.read_video(driver, max_frames), loop_timings):
      stats['frames'] += 1
      stats['frames_without_face'] += crop is None
      result = panel(anim.composite({k: v[None] for k, v in out_frame.items()}, bg)[0])
      bar.update(1)
      if side_by_side:
        yield np.concatenate([source_panel, panel(crop) if crop is not None else blank, result], axis=1)
      else:
        yield result
    bar.close()

  start = time.perf_counter()
  video.write_mp4(out, frames(), fps)
  total_s = time.perf_counter() - start
  n = max(stats['frames'], 1)
  timings['driver detect+crop per frame'] = loop_timings['detect'] / n
  timings['render per frame'] = loop_timings['render'] / n
  timings['compose+encode per frame'] = (total_s - loop_timings['detect'] - loop_timings['render']) / n
  return {'timings_s': timings, **stats, 'enhanced': avatar.enhanced, 'out': out}


def main(argv):
  del argv
  summary = drive(FLAGS.params, FLAGS.source, FLAGS.driver, FLAGS.out, side_by_side=FLAGS.side_by_side,
                  enhance=FLAGS.enhance, background=FLAGS.background, landmarks=FLAGS.landmarks,
                  segmentation=FLAGS.segmentation, display_size=FLAGS.display_size,
                  max_frames=FLAGS.max_frames, chunk=FLAGS.chunk)
  print(f'wrote {summary["out"]}: {summary["frames"]} frames ({summary["frames_without_face"]} without a '
        f'face, pose reused), enhancer {"on" if summary["enhanced"] else "off"}')
  for stage, seconds in summary['timings_s'].items():
    print(f'  {stage:42s} {seconds * 1000:10.1f} ms')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['params', 'source', 'driver', 'out'])
  app.run(main)
