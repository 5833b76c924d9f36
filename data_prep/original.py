"""Importer for data prepared for the original code (docs/model.md#dataset-layout).

Layout: ``DATA_ROOT/{imgs,keypoints,segs}/{train,test}/PERSON/VIDEO/SEQ/
FRAME.{jpg,npy,png}``. As in the original's loader, one example is one
PERSON/VIDEO with all its sequences pooled, and only frames present in all
three trees are used. Nothing is re-detected: keypoints are read from the
``.npy`` files (68x2 or 68x3, pixels of the stored frame; the first 68 rows
and x, y are kept). Frames and masks are copied byte for byte when they
already have the target size (masks must be single-channel); otherwise they
are resized with PIL bicubic, as the original's loader does, and re-encoded.
If the ``segs`` tree is absent, masks are computed with the segmentation
backend. Unreadable frames are dropped and reported.
"""

import pathlib

from data_prep import sources

SPLITS = ('train', 'test')


def has_masks(data_root: str) -> bool:
  """Whether DATA_ROOT has a segs/ tree (else masks are computed)."""
  return (pathlib.Path(data_root) / 'segs').is_dir()


def discover(data_root: str) -> list[sources.Job]:
  """One job per DATA_ROOT/imgs/SPLIT/PERSON/VIDEO.

  Raises:
    FileNotFoundError: DATA_ROOT has no imgs/ or keypoints/ tree.
  """
  root = pathlib.Path(data_root)
  for tree in ('imgs', 'keypoints'):
    if not (root / tree).is_dir():
      raise FileNotFoundError(
          f'{root} is not in the original layout: {tree}/ is missing '
          '(expected DATA_ROOT/{imgs,keypoints,segs}/{train,test}/PERSON/'
          'VIDEO/SEQ/FRAME.*)')
  jobs = []
  for split in SPLITS:
    split_dir = root / 'imgs' / split
    if not split_dir.is_dir():
      continue
    for video_dir in sorted(p for p in split_dir.glob('*/*') if p.is_dir()):
      seqs = tuple(sources.Sequence(str(seq), seq.name)
                   for seq in sorted(video_dir.iterdir()) if seq.is_dir())
      if seqs:
        jobs.append(sources.Job(video_dir.parent.name, video_dir.name, split,
                                seqs, kind='original'))
  return jobs
