r"""Evaluation throughput per metric on the CPU (frames/s), at the paper's 256x256 and the demo's 64x64.

Frames are real: crops of the carphone clip (the demo dataset's video), with a "prediction" made by blurring
and shifting them slightly (so face detectors see faces on both sides, as for a decent model). Each metric is
timed on the same batch after one warm-up call (jit compilation and model loading are excluded and printed
separately). The baseline in the same run is PSNR, the cheapest metric: the table gives each metric's cost
relative to it.

  python bench/evaluation.py [--frames 32] [--sizes 64,256]
"""

import argparse
import time

import numpy as np

from bilayer_jax import xla_cpu
from bilayer_jax.data import samples
from bilayer_jax.evaluators import metrics as metrics_lib
from bilayer_jax.face import crop as crop_lib
from bilayer_jax.face import images as images_lib
from bilayer_jax.face import landmarks as landmarks_lib
from bilayer_jax.inference import video


def real_frames(count: int, size: int):
  """(count, size, size, 3) face crops in [-1, 1], their predictions-like copies and pixel keypoints."""
  backend = landmarks_lib.get_landmark_backend('dlib')
  crops, kps = [], []
  for frame, lms in backend.detect_video(video.read_video(samples.carphone_path(), count)):
    crop, lms_in_crop = crop_lib.crop_face(frame, lms, 256)
    crops.append(images_lib.resize_bicubic(crop, size))
    kps.append(lms_in_crop * size / 256)
  real = np.stack(crops).astype(np.float32) / 127.5 - 1
  fake = np.roll((real + np.roll(real, 1, axis=1) + np.roll(real, 1, axis=2)) / 3, 1, axis=2)
  return real, fake.astype(np.float32), np.stack(kps).astype(np.float32)


def timed(fn, repeats: int = 2) -> float:
  fn()  # warm-up: compilation, model loading
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def main():
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--frames', type=int, default=32)
  parser.add_argument('--sizes', default='64,256')
  args = parser.parse_args()
  names = ('psnr', 'l1', 'ssim', 'lpips', 'csim_dlib', 'nme_dlib', 'fid')
  print(f'{"size":>5} {"metric":<10} {"frames/s":>9} {"x PSNR time":>12} {"setup s":>8}')
  for size in (int(s) for s in args.sizes.split(',')):
    real, fake, kps = real_frames(args.frames, size)
    baseline = None
    for name in names:
      start = time.perf_counter()
      evaluator = metrics_lib.FrameEvaluator((name,))
      setup = time.perf_counter() - start
      if name == 'fid':
        run = lambda: (evaluator.inception(real), evaluator.inception(fake))
      else:
        run = lambda: evaluator.self_reenactment(fake, real, kps)
      seconds = timed(run)
      baseline = baseline or seconds
      print(f'{size:>5} {name:<10} {len(real) / seconds:>9.1f} {seconds / baseline:>12.1f} {setup:>8.1f}')


if __name__ == '__main__':
  main()
