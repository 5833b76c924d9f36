"""Inline display for the notebooks: image rows, mp4 players, training curves and image grids read back from
the TensorBoard event files the trainer writes, live TensorBoard, and tables.

Everything also works headless (nbclient/papermill in CI): figures go through matplotlib's inline backend,
videos are embedded as data URLs.
"""

import base64
import glob
import io
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from bilayer_jax.colab import media


def _ipython_display(obj) -> None:
  from IPython import display  # pylint: disable=g-import-not-at-top
  display.display(obj)


def show_images(images: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None, height: float = 3.0):
  """One row of images (uint8 RGB, or float in [0, 1]; any sizes) with titles."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(images), figsize=(height * len(images), height), squeeze=False)
  for i, (ax, image) in enumerate(zip(axes[0], images)):
    image = np.asarray(image)
    ax.imshow(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image,
              cmap='gray' if image.ndim == 2 or image.shape[-1] == 1 else None)
    ax.set_title(titles[i] if titles else '', fontsize=10)
    ax.axis('off')
  fig.tight_layout()
  plt.show()
  plt.close(fig)


def show_picture(image: np.ndarray) -> None:
  """A uint8 RGB image at its own pixel size (a results strip: matplotlib would shrink its labels)."""
  _ipython_display(Image.fromarray(np.asarray(image, np.uint8)))


def video_html(path: os.PathLike, width: int = 640) -> str:
  """An HTML5 player with the mp4 embedded (works in Colab, Jupyter and exported notebooks)."""
  with open(path, 'rb') as f:
    data = base64.b64encode(f.read()).decode()
  return (f'<video width="{width}" controls loop autoplay muted playsinline>'
          f'<source src="data:video/mp4;base64,{data}" type="video/mp4"></video>')


def show_video(path: os.PathLike, width: int = 640) -> None:
  from IPython import display  # pylint: disable=g-import-not-at-top
  _ipython_display(display.HTML(video_html(path, width)))


def show_video_frames(path: os.PathLike, count: int = 4, title: str = 'frame') -> None:
  """`count` frames spread over the video, one per row (a side-by-side video shows its panels)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  frames = media.video_frames(path, count)
  fig, axes = plt.subplots(len(frames), 1, figsize=(9, 3 * len(frames)), squeeze=False)
  for i, (ax, frame) in enumerate(zip(axes[:, 0], frames)):
    ax.imshow(frame)
    ax.set_title(f'{title} {i + 1}/{len(frames)}', fontsize=10)
    ax.axis('off')
  fig.tight_layout()
  plt.show()
  plt.close(fig)


def _events(logdir: os.PathLike):
  """Summary values of every event file in `logdir`, in file (= time) order: (step, value proto)."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  for path in sorted(glob.glob(os.path.join(str(logdir), 'events.out.tfevents.*'))):
    for event in event_file_loader.EventFileLoader(path).Load():
      if event.HasField('summary'):
        for value in event.summary.value:
          yield event.step, value


def read_scalars(logdir: os.PathLike) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """{tag: (steps, values)} of every scalar the trainer logged to `logdir`; a step logged again after a
  resume keeps its latest value."""
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  series: Dict[str, Dict[int, float]] = {}
  for step, value in _events(logdir):
    if value.metadata.plugin_data.plugin_name == 'scalars':
      series.setdefault(value.tag, {})[step] = float(tensor_util.make_ndarray(value.tensor))
  return {tag: (np.array(sorted(s)), np.array([s[k] for k in sorted(s)])) for tag, s in series.items()}


def read_image(logdir: os.PathLike, tag: str) -> Tuple[int, np.ndarray]:
  """(step, uint8 RGB image) of the latest image logged under `tag`.

  Raises:
    KeyError: nothing was logged under `tag` (the message lists the image tags that were).
  """
  latest, seen = None, set()
  for step, value in _events(logdir):
    if value.metadata.plugin_data.plugin_name == 'images':
      seen.add(value.tag)
      if value.tag == tag and (latest is None or step >= latest[0]):
        latest = (step, value.tensor.string_val[2])  # [width, height, PNG bytes]
  if latest is None:
    raise KeyError(f'{logdir}: no image {tag!r} logged (image tags: {sorted(seen)})')
  return latest[0], np.asarray(Image.open(io.BytesIO(latest[1])).convert('RGB'))


def plot_scalars(logdirs: Mapping[str, os.PathLike], tags: Sequence[str]) -> None:
  """One panel per tag, one line per run (e.g. {'base': WORKDIR/base, 'enhancer': WORKDIR/enhancer})."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  runs = {name: read_scalars(logdir) for name, logdir in logdirs.items()}
  fig, axes = plt.subplots(1, len(tags), figsize=(4 * len(tags), 3), squeeze=False)
  for ax, tag in zip(axes[0], tags):
    for name, series in runs.items():
      if tag in series:
        ax.plot(*series[tag], marker='.' if len(series[tag][0]) < 20 else None, label=name)
    ax.set_title(tag, fontsize=10)
    ax.set_xlabel('step')
    if len(runs) > 1:
      ax.legend(fontsize=8)
  fig.tight_layout()
  plt.show()
  plt.close(fig)


def show_logged_image(logdir: os.PathLike, tag: str, caption: str = '') -> None:
  """The latest image grid logged under `tag` (columns as the trainer logs them)."""
  step, image = read_image(logdir, tag)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  width = min(16.0, max(6.0, image.shape[1] / 40))
  fig, ax = plt.subplots(figsize=(width, width * image.shape[0] / image.shape[1] + 0.5))
  ax.imshow(image)
  ax.set_title(f'{tag} at step {step}' + (f' — {caption}' if caption else ''), fontsize=10)
  ax.axis('off')
  fig.tight_layout()
  plt.show()
  plt.close(fig)


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Optional[List[str]] = None) -> str:
  columns = columns or list(rows[0])
  fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(row.get(c, '')) for c in columns) + ' |' for row in rows]
  return '\n'.join(lines)


def show_table(rows: Sequence[Mapping[str, object]], columns: Optional[List[str]] = None) -> None:
  from IPython import display  # pylint: disable=g-import-not-at-top
  _ipython_display(display.Markdown(markdown_table(rows, columns)))


def tensorboard(logdir: os.PathLike, inline: bool) -> None:
  """Live TensorBoard inside the notebook when `inline` (Colab, where the notebooks pass it); elsewhere the
  command to start it, since a headless execution would leave a server running that nobody looks at."""
  if not inline:
    print(f'TensorBoard: run `tensorboard --logdir {logdir}` in a terminal and open http://localhost:6006')
    return
  from IPython import get_ipython  # pylint: disable=g-import-not-at-top
  shell = get_ipython()
  shell.run_line_magic('load_ext', 'tensorboard')
  shell.run_line_magic('tensorboard', f'--logdir "{logdir}"')
