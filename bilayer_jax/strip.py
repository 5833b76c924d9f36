r"""A picture of results: the source crop, a few driver frames and what the model renders from each.

    python -m bilayer_jax.strip --params PARAMS --source photo.jpg|clip.mp4 [--source_frame K] \
        --driver video.mp4 [--driver_start A --driver_end B] [--frames 6] [--size 128] \
        [--enhance|--noenhance] [--background 255,255,255] --out strip.png

Layout, one column per chosen driver frame (evenly spaced over frames [A, B) of --driver):

    source crop | driver crop 1 | driver crop 2 | ...
    (--title)   | result 1      | result 2      | ...

The crops are the model's own (the same crop the avatar and the driver poses come from), the results are
composited on --background. --source may be a video: frame --source_frame is the photo, so held-out frames
of a training video can be both source and driver. The README's picture is made by this command (README
"Results"), the demo notebook shows the same for the user's photo. Writes the PNG under a temp name, then
renames it (`video.write_image`); user errors are one line.
"""

import itertools
from typing import List, Optional

from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageDraw

from bilayer_jax import cli
from bilayer_jax import drive as drive_lib
from bilayer_jax import errors
from bilayer_jax import xla_cpu
from bilayer_jax.face import images
from bilayer_jax.inference import video

FLAGS = flags.FLAGS
LABEL_HEIGHT = 18


def _define_flags():
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string('params', None, 'bilayer_jax params directory (any family).')
  flags.DEFINE_string('source', None, 'Source photo, or a video of the person (see --source_frame).')
  flags.DEFINE_integer('source_frame', 0, 'With a video --source: the frame used as the photo.')
  flags.DEFINE_string('driver', None, 'Driving video.')
  flags.DEFINE_integer('driver_start', 0, 'First driver frame considered.')
  flags.DEFINE_integer('driver_end', None, 'End (exclusive) of the driver frames considered (default: all).')
  flags.DEFINE_integer('frames', 6, 'Driver frames shown, evenly spaced.')
  flags.DEFINE_integer('size', 128, 'Side of each panel in pixels (bicubic resize).')
  flags.DEFINE_bool('enhance', None, 'Run the texture enhancer (default: if the params have one).')
  flags.DEFINE_string('background', '255,255,255', 'Background: "R,G,B" or an image file.')
  flags.DEFINE_string('title', '', 'Caption under the source crop (" / " breaks the line).')
  flags.DEFINE_string('out', None, 'Output .png.')


def read_frame(path: str, index: int) -> np.ndarray:
  """Frame `index` of a video, or the image itself when `path` is an image and `index` is 0."""
  if index == 0:
    return video.read_still(path)
  frame = next(itertools.islice(video.read_video(path), index, None), None)
  if frame is None:
    raise errors.InvalidArgumentError(f'{path}: --source_frame {index} is past the end of the video')
  return frame


def chosen_frames(path: str, start: int, end: Optional[int], count: int) -> List[np.ndarray]:
  """`count` frames of a video evenly spaced over [start, end) (decoded twice: once to count, once to pick,
  so a long video is never held in memory)."""
  if count < 1 or start < 0:
    raise errors.InvalidArgumentError(f'--frames {count}, --driver_start {start}: expected at least 1 frame '
                                      'from a start >= 0')
  available = sum(1 for _ in itertools.islice(video.read_video(path, end), start, None))
  if available < count:
    raise errors.InvalidArgumentError(f'{path}: {available} frames in [{start}, {end}), fewer than '
                                      f'--frames {count}')
  picks = set((start + np.linspace(0, available - 1, count).round()).astype(int).tolist())
  return [frame for i, frame in enumerate(video.read_video(path, end)) if i in picks]


def render_columns(params: str, photo: np.ndarray, frames: List[np.ndarray], *, enhance=None,
                   background=(255, 255, 255), name: str = 'source'):
  """(source crop, [driver crop or None], [composited result]) at the model's resolution."""
  anim = drive_lib.load_animator(params)
  inputs = anim.preprocessor.source(photo, name=name)
  avatar = anim.init_avatar(inputs, enhance=enhance)
  crops, results = [], []
  for _, crop, out in anim.drive(avatar, frames):
    crops.append(crop)
    results.append(anim.composite({k: v[None] for k, v in out.items()}, background)[0])
  return inputs.crop, crops, results


def compose(source: np.ndarray, crops: list, results: list, size: int, title: str = '') -> np.ndarray:
  """The two-row strip (see the module docstring) as a uint8 RGB image with small labels."""
  panel = lambda img: images.resize_bicubic(np.ascontiguousarray(img), size)
  blank = np.full((size, size, 3), 255, np.uint8)
  top = [panel(source)] + [panel(c) if c is not None else blank for c in crops]
  bottom = [blank] + [panel(r) for r in results]
  band = np.full((LABEL_HEIGHT, size * len(top), 3), 255, np.uint8)
  grid = np.concatenate([band, np.concatenate(top, 1), band, np.concatenate(bottom, 1)], 0)
  image = Image.fromarray(grid)
  draw = ImageDraw.Draw(image)
  draw.text((4, 3), 'source', fill=(0, 0, 0))
  draw.multiline_text((4, size + 2 * LABEL_HEIGHT + 3), title.replace(' / ', '\n'), fill=(0, 0, 0))
  for i in range(len(crops)):
    draw.text(((i + 1) * size + 4, 3), f'driver {i + 1}', fill=(0, 0, 0))
    draw.text(((i + 1) * size + 4, size + LABEL_HEIGHT + 3), f'result {i + 1}', fill=(0, 0, 0))
  return np.asarray(image)


def make_strip(params: str, source: str, driver: str, *, source_frame: int = 0, driver_start: int = 0,
               driver_end: Optional[int] = None, frames: int = 6, size: int = 128, enhance=None,
               background='255,255,255', title: str = '') -> np.ndarray:
  """The whole job short of writing: inputs are read (and checked) before the params are loaded."""
  photo = read_frame(source, source_frame)
  driving = chosen_frames(driver, driver_start, driver_end, frames)
  bg = drive_lib.parse_background(background) if isinstance(background, str) else background
  crop, crops, results = render_columns(params, photo, driving, enhance=enhance, background=bg, name=source)
  return compose(crop, crops, results, size, title)


def main(argv):
  del argv
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  image = make_strip(FLAGS.params, FLAGS.source, FLAGS.driver, source_frame=FLAGS.source_frame,
                     driver_start=FLAGS.driver_start, driver_end=FLAGS.driver_end, frames=FLAGS.frames,
                     size=FLAGS.size, enhance=FLAGS.enhance, background=FLAGS.background, title=FLAGS.title)
  video.write_image(FLAGS.out, image)
  print(f'wrote {FLAGS.out}: {image.shape[1]}x{image.shape[0]}')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['params', 'source', 'driver', 'out'])
  cli.run(main)
