r"""Drive a photo with a video: the one-shot avatar of --source, animated by the poses of --driver.

    python -m bilayer_jax.drive --params runs/demo/enhancer/params --source photo.jpg --driver video.mp4 \
        --out out.mp4 [--side_by_side] [--enhance|--noenhance] [--background 255,255,255|bg.jpg] \
        [--face_index N | --face_box x0,y0,x1,y1] [--detector hog|cnn] [--max_faceless_fraction 0.5]

--params is a bilayer_jax params directory: WORKDIR/<stage>/params of a training run, or official weights
imported with `python -m bilayer_jax.import_original`. The inputs are checked first (the photo, the
background, the driver's first frame), so a wrong path fails before the model is loaded. The photo's
largest face is animated; --face_index (0 = largest) or --face_box (the detected face overlapping that
box in photo pixels the most) choose another, and the faces found are printed when there are several.
Driver frames without a face reuse the last pose; a driver where no frame, or more than
--max_faceless_fraction of them, has a face is an error. Writes an H.264 mp4 (only once complete: on any
error nothing is written) and prints a per-stage timing summary: source detection + avatar init (once),
driver detection and the per-frame render (per frame). User errors print one line `error: ...` and exit 2.

From Python, `drive()` also takes an animator of `load_animator()` in place of the directory (the web app,
bilayer_jax/app.py, loads and compiles one model and drives every request with it) and reports its stages
to an `on_progress(fraction or None, message)` callback.
"""

import os
import time
from typing import Callable, Optional

from absl import flags
import numpy as np
import tqdm.auto

from bilayer_jax import cli
from bilayer_jax import families
from bilayer_jax import xla_cpu
from bilayer_jax.face import images
from bilayer_jax.face import landmarks as landmarks_lib
from bilayer_jax.inference import preprocess
from bilayer_jax.inference import video

FLAGS = flags.FLAGS


def _define_flags():
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string('params', None, 'bilayer_jax params directory.')
  flags.DEFINE_string('source', None, 'Source photo (any size; its largest face unless chosen below), or a '
                      'video of the person (its first frame).')
  flags.DEFINE_string('driver', None, 'Driving video (mp4 or anything FFmpeg decodes).')
  flags.DEFINE_string('out', None, 'Output .mp4.')
  flags.DEFINE_bool('side_by_side', False, 'Write [source crop | driver crop | result] per frame.')
  flags.DEFINE_bool('enhance', None, 'Run the texture enhancer at init (default: if the params have one).')
  flags.DEFINE_string('background', '255,255,255', 'Background: "R,G,B" or an image file.')
  flags.DEFINE_string('landmarks', 'auto', 'Landmark backend: auto (face_alignment if its weights are '
                      'present, else dlib), dlib, face_alignment.')
  flags.DEFINE_enum('detector', 'hog', list(landmarks_lib.DETECTORS), 'dlib face detector: hog, or cnn (also '
                    'turned faces; seconds per photo on CPU; implies dlib landmarks).')
  flags.DEFINE_integer('face_index', None, 'Which face of the source photo to animate: 0 = the largest '
                       '(default), 1 = the next, ... (the faces found are printed when there are several).')
  flags.DEFINE_string('face_box', None, 'x0,y0,x1,y1 in pixels of the source photo: animate the detected face '
                      'that overlaps this box the most.')
  flags.DEFINE_float('max_faceless_fraction', preprocess.DEFAULT_MAX_FACELESS_FRACTION, 'Fail (writing '
                     'nothing) when more than this fraction of the driver frames has no face; a driver with no '
                     'face at all always fails.')
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
      raise preprocess.OptionError(f'--background {value}: colour values must be 0-255')
    return colour
  return video.read_image(value)


def load_animator(params: str, *, landmarks: str = 'auto', segmentation: str = 'mediapipe_selfie',
                  detector: str = 'hog', chunk: int = 8):
  """The animator of a params directory (any family) with the chosen landmark, segmentation and face
  detector backends; `drive` reuses it when given it in place of the directory."""
  anim = families.animator_from_params(params, chunk=chunk)
  anim.preprocessor = preprocess.FacePreprocessor(anim.cfg.image_size, landmarks, segmentation, detector=detector,
                                                  crop_style=anim.preprocessor.crop_style)
  return anim


def _avatar(anim, photo: np.ndarray, source: str, timings: dict, report: Callable, *, enhance, face_index,
            face_box):
  """(preprocessed source, avatar) with the per-frame function compiled; fills `timings`."""
  report(0.0, 'finding the face and building the avatar')
  start = time.perf_counter()
  inputs = anim.preprocessor.source(photo, name=source, face_index=face_index, face_box=face_box)
  timings['source detect+crop+mask'] = time.perf_counter() - start
  start = time.perf_counter()
  avatar = anim.init_avatar(inputs, enhance=enhance)
  timings['avatar init (incl. compile)'] = time.perf_counter() - start
  report(0.0, 'compiling the renderer')
  start = time.perf_counter()
  # Compiles the per-frame function once, on what this family renders from (keypoints, or LPD's face crop).
  anim.render(avatar, anim._source_pose(avatar)[None])  # pylint: disable=protected-access
  timings['render compile'] = time.perf_counter() - start
  return inputs, avatar


def _frame_reporter(report: Callable, total: Optional[int]) -> Callable[[int], None]:
  """report(done / total, 'rendering frame done of total') after each frame (no fraction if total is unknown)."""
  def frame_done(done: int) -> None:
    if total:
      report(min(done / total, 1.0), f'rendering frame {done} of {total}')
    else:
      report(None, f'rendering frame {done}')
  return frame_done


def drive(params, source: str, driver: str, out: str, *, side_by_side: bool = False, enhance=None,
          background='255,255,255', landmarks: str = 'auto', segmentation: str = 'mediapipe_selfie',
          display_size: int = 256, max_frames=None, chunk: int = 8, progress: bool = True, face_index=None,
          face_box=None, detector: str = 'hog',
          max_faceless_fraction: float = preprocess.DEFAULT_MAX_FACELESS_FRACTION,
          on_progress: Optional[Callable[[Optional[float], str], None]] = None) -> dict:
  """Runs the whole drive job; returns the timing summary (seconds), counts and the faces of the photo.

  Args:
    params: a params directory, or an animator of `load_animator` (then landmarks, segmentation, detector
      and chunk are the animator's, and nothing is loaded).
    on_progress: called with (fraction done or None, what is happening) at each stage and after each frame.
    (the rest: the command-line flags of the same names; `progress` is the terminal's progress bar.)

  Raises:
    errors.UserError subclasses: unreadable inputs (before the params are loaded), no face or no chosen
    face in the photo, a driver without enough faces (then nothing is written).
  """
  report = on_progress or (lambda fraction, message: None)
  timings = {}
  start = time.perf_counter()
  photo = video.read_still(source)
  bg = parse_background(background) if isinstance(background, str) else background
  fps, total = preprocess.open_driver(driver, max_frames)
  coverage = preprocess.FaceCoverage(driver, max_faceless_fraction, total)
  timings['open inputs'] = time.perf_counter() - start
  anim = params
  if isinstance(params, (str, os.PathLike)):
    report(None, 'loading the model')
    start = time.perf_counter()
    anim = load_animator(os.fspath(params), landmarks=landmarks, segmentation=segmentation, detector=detector,
                         chunk=chunk)
    timings['load'] = time.perf_counter() - start
  inputs, avatar = _avatar(anim, photo, source, timings, report, enhance=enhance, face_index=face_index,
                           face_box=face_box)
  coverage.detector = anim.preprocessor.landmarks.name
  panel = lambda img: images.resize_bicubic(np.ascontiguousarray(img), display_size)
  source_panel = panel(inputs.crop)
  blank = np.zeros_like(source_panel)
  loop_timings = {}
  frame_done = _frame_reporter(report, total)

  def frames():
    bar = tqdm.auto.tqdm(total=total, unit='frame', disable=not progress)  # a widget in notebooks
    driving = anim.drive(avatar, video.read_video(driver, max_frames), loop_timings, coverage)
    for done, (_, crop, out_frame) in enumerate(driving, 1):
      result = panel(anim.composite({k: v[None] for k, v in out_frame.items()}, bg)[0])
      bar.update(1)
      frame_done(done)
      if side_by_side:
        yield np.concatenate([source_panel, panel(crop) if crop is not None else blank, result], axis=1)
      else:
        yield result
    bar.close()

  start = time.perf_counter()
  video.write_mp4(out, frames(), fps)  # raises (and writes nothing) when the driver has too few faces
  total_s = time.perf_counter() - start
  n = max(coverage.frames, 1)
  timings['driver detect+crop per frame'] = loop_timings['detect'] / n
  timings['render per frame'] = loop_timings['render'] / n
  timings['compose+encode per frame'] = (total_s - loop_timings['detect'] - loop_timings['render']) / n
  return {'timings_s': timings, 'frames': coverage.frames, 'frames_without_face': coverage.faceless,
          'coverage': coverage.summary(), 'enhanced': avatar.enhanced, 'out': out,
          'face_index': inputs.face_index, 'faces': inputs.faces}


def main(argv):
  del argv
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  summary = drive(FLAGS.params, FLAGS.source, FLAGS.driver, FLAGS.out, side_by_side=FLAGS.side_by_side,
                  enhance=FLAGS.enhance, background=FLAGS.background, landmarks=FLAGS.landmarks,
                  segmentation=FLAGS.segmentation, display_size=FLAGS.display_size,
                  max_frames=FLAGS.max_frames, chunk=FLAGS.chunk, face_index=FLAGS.face_index,
                  face_box=FLAGS.face_box, detector=FLAGS.detector,
                  max_faceless_fraction=FLAGS.max_faceless_fraction)
  if len(summary['faces']) > 1:
    print(f'{FLAGS.source}: animated face #{summary["face_index"]}; '
          f'{preprocess.describe_faces(summary["faces"])} (--face_index / --face_box choose another)')
  print(f'wrote {summary["out"]}: {summary["frames"]} frames; {summary["coverage"]} (pose reused); '
        f'enhancer {"on" if summary["enhanced"] else "off"}')
  for stage, seconds in summary['timings_s'].items():
    print(f'  {stage:42s} {seconds * 1000:10.1f} ms')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['params', 'source', 'driver', 'out'])
  cli.run(main)
