"""The FSTH reference's landmark images: coloured 68-point polylines on white, drawn with matplotlib's Agg
renderer so that every pixel equals the reference's (docs/fsth.md#landmark-sketches).

The reference draws each frame's landmarks on a figure of the frame's size at 100 dpi: a white image fills
the axes, then one open polyline per facial part, 2 points wide, antialiased. Its colours, by iBUG range:
jaw 0–16 green, brows 17–21 and 22–26 orange, nose 27–30 and 31–35 blue, eyes 36–41 and 42–47 red, outer
lip 48–59 purple, inner lip 60–67 pink. A landmark outside the frame makes matplotlib widen the axes, so the
whole sketch shrinks and no longer lines up with the frame; `sketch` keeps that behaviour by default
(`clip_to_frame=True` fixes the axes to the frame instead).
"""

from typing import Tuple

import numpy as np

# (first landmark, end, matplotlib colour) of each polyline.
PARTS: Tuple[Tuple[int, int, str], ...] = (
    (0, 17, 'green'), (17, 22, 'orange'), (22, 27, 'orange'), (27, 31, 'blue'), (31, 36, 'blue'),
    (36, 42, 'red'), (42, 48, 'red'), (48, 60, 'purple'), (60, 68, 'pink'))
DPI = 100
LINE_WIDTH_POINTS = 2


def sketch(landmarks: np.ndarray, height: int, width: int, clip_to_frame: bool = False) -> np.ndarray:
  """(68, 2) landmarks in pixels (x, y) -> (height, width, 3) uint8 RGB sketch."""
  # The object-oriented API (no pyplot): no global figure state, safe in worker threads and processes.
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  points = np.asarray(landmarks, np.float64)
  if points.shape != (68, 2):
    raise ValueError(f'expected (68, 2) landmarks, got {points.shape}')
  fig = figure_lib.Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
  canvas = backend_agg.FigureCanvasAgg(fig)
  axes = fig.add_subplot(1, 1, 1)
  axes.imshow(np.ones((height, width, 3)))
  fig.subplots_adjust(left=0, right=1, top=1, bottom=0)
  for start, end, colour in PARTS:
    axes.plot(points[start:end, 0], points[start:end, 1], linestyle='-', color=colour, lw=LINE_WIDTH_POINTS)
  if clip_to_frame:
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
  axes.axis('off')
  canvas.draw()
  rgba = np.asarray(canvas.buffer_rgba())
  return np.ascontiguousarray(rgba[..., :3])
