r"""Cost of dlib's face detectors on single photos (CPU, one process): HOG and CNN, one scale against the
coarse-to-fine multi-scale search of `DlibBackend.detect` / `detect_faces`.

Photos: plain canvases of ~640 px (640x480) and ~1000 px (800x1000), each with two copies of
scikit-image's astronaut pasted in (faces of 100 px and 50 px), so "faces found" has a known answer (2).

Rows per detector and photo:
  one scale      the detector once on the copy downscaled to 640 px (what photos got before the
                 multi-scale search, and what data prep's video tracking still runs per detection)
  detect         coarse to fine, stopping once finer scales can only add smaller faces (the largest face)
  detect_faces   every scale (640 px copy, full resolution, upsampled 2x), merged: all faces

  python bench/face_detection.py [--runs 3] [--cnn_runs 1] [--sizes 640x480,800x1000] [--detectors hog,cnn]
"""

import argparse
import functools
import time

import cv2
import numpy as np
import skimage.data

from bilayer_jax.face import images
from bilayer_jax.face import landmarks

FACE_SIZES = (100, 50)  # px: the astronaut's face box width in each pasted copy
ASTRONAUT_FACE_WIDTH = 87  # her dlib HOG box at the original 512x512
HEAD = (120, 20, 320, 280)  # x0, y0, x1, y1 of the region pasted around her head


def photo(width: int, height: int) -> np.ndarray:
  """A grey canvas with the astronaut's head pasted at each of FACE_SIZES, left to right."""
  canvas = np.full((height, width, 3), 200, np.uint8)
  x0, y0, x1, y1 = HEAD
  x = width // 10
  for size in FACE_SIZES:
    scale = size / ASTRONAUT_FACE_WIDTH
    head = cv2.resize(skimage.data.astronaut()[y0:y1, x0:x1], None, fx=scale, fy=scale,
                      interpolation=cv2.INTER_AREA)
    y = (height - head.shape[0]) // 3
    canvas[y:y + head.shape[0], x:x + head.shape[1]] = head
    x += head.shape[1] + width // 20
  return canvas


def one_scale(backend: landmarks.DlibBackend, image: np.ndarray) -> int:
  rgb = images.to_rgb(image)
  gray = images.to_gray(rgb)
  scale = min(1.0, backend.detect_max_side / max(gray.shape))
  boxes, _ = backend._run(rgb, gray, scale, 0)  # pylint: disable=protected-access
  return len(boxes)


def timed(fn, image: np.ndarray, runs: int) -> tuple[float, object]:
  """(ms per call, what the first call returned) over `runs` calls after one warm-up."""
  found = fn(image)
  start = time.perf_counter()
  for _ in range(runs):
    fn(image)
  return (time.perf_counter() - start) / runs * 1000, found


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--runs', type=int, default=3, help='timed calls per HOG row')
  parser.add_argument('--cnn_runs', type=int, default=1, help='timed calls per CNN row (seconds each)')
  parser.add_argument('--sizes', default='640x480,800x1000', help='photo sizes, WxH, comma-separated')
  parser.add_argument('--detectors', default=','.join(landmarks.DETECTORS), help='comma-separated')
  args = parser.parse_args()
  modes = {'one scale': one_scale,
           'detect': lambda b, im: 'largest' if b.detect(im) is not None else 'none',
           'detect_faces': lambda b, im: len(b.detect_faces(im))}
  print(f'{"detector":8s} {"mode":13s} {"photo":>10s} {"ms/photo":>10s} {"faces found":>12s}')
  for detector in args.detectors.split(','):
    backend = landmarks.DlibBackend(detector=detector)
    runs = args.runs if detector == 'hog' else args.cnn_runs
    for size in args.sizes.split(','):
      width, height = (int(v) for v in size.split('x'))
      image = photo(width, height)
      for mode, fn in modes.items():
        ms, found = timed(functools.partial(fn, backend), image, runs)
        found = found if mode == 'detect' else f'{found} of {len(FACE_SIZES)}'
        print(f'{detector:8s} {mode:13s} {size:>10s} {ms:10.1f} {found:>12s}')


if __name__ == '__main__':
  main()
