r"""One command from a folder of videos to a tfds dataset.

Examples::

  # VoxCeleb2 (dev/ and test/ trees of mp4), all cores, resumable:
  python -m data_prep.build --input ~/vox2 --data_dir ~/tensorflow_datasets \
      --name voxceleb2

  # Any folder or glob of videos / frame folders:
  python -m data_prep.build --input '/data/talks/*.mp4' --data_dir out \
      --name talks --image_size 256

  # Data prepared for the original code (imgs/keypoints/segs trees):
  python -m data_prep.build --source original --input DATA_ROOT \
      --data_dir out --name vc2_original --image_size 512

  # On Apache Beam (here the local DirectRunner):
  python -m data_prep.build --input ~/vox2 --data_dir out --name voxceleb2 \
      --beam --beam_options='--direct_num_workers=16 --direct_running_mode=multi_processing'

The result is read with ``bilayer_jax.data.input_pipeline.create_dataset(
data_dir, split, dataset_name='talking_heads/NAME', ...)``. Re-running the
same command resumes; ``--overwrite`` rebuilds the TFRecords from the cached
per-video records (e.g. after adding videos).
"""

import argparse
import dataclasses
import glob
import json
import os
import shlex

from data_prep import process

_DATASET = 'talking_heads'


def split_glob(path: str) -> tuple[str, tuple[str, ...]]:
  """'/a/b/*/c*.mp4' -> ('/a/b', ('*/c*.mp4',)); plain paths -> (path, ())."""
  path = os.path.expanduser(path)
  if not glob.has_magic(path):
    return path, ()
  parts = path.split(os.sep)
  i = next(i for i, p in enumerate(parts) if glob.has_magic(p))
  return os.sep.join(parts[:i]) or os.sep, (os.sep.join(parts[i:]),)


def build_dataset(config, data_dir: str, manual_dir: str | None = None, *,
                  work_dir: str | None = None, num_workers: int | None = None,
                  use_beam: bool = False, beam_options=None,
                  overwrite: bool = False, retry_skipped: bool = False,
                  progress: bool = True, num_shards: int | None = None):
  """Builds (or resumes) a talking_heads dataset; returns the tfds builder.

  Args:
    config: a ``builder.TalkingHeadsConfig``.
    data_dir: tfds data_dir; the dataset lands in
      ``data_dir/talking_heads/<config.name>/<version>``.
    manual_dir: input root (videos or original layout); unused for 'demo'.
    work_dir: per-video cache (default: data_dir/downloads/...).
    num_workers: local processes (default: all cores).
    use_beam: run the processing as an Apache Beam pipeline.
    beam_options: ``PipelineOptions`` (or argument string) for Beam.
    overwrite: rebuild the TFRecords even if the dataset exists.
    retry_skipped: redo videos skipped in earlier runs.
    progress: show progress bars.
    num_shards: force the number of TFRecord files per split.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from data_prep import builder as builder_lib  # pylint: disable=g-import-not-at-top
  if isinstance(beam_options, str):
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    beam_options = pipeline_options.PipelineOptions(
        shlex.split(beam_options))
  builder = builder_lib.TalkingHeads(
      config=config, data_dir=data_dir, work_dir=work_dir,
      num_workers=num_workers, use_beam=use_beam,
      retry_skipped=retry_skipped, progress=progress)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite else
          tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  download_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=mode, try_download_gcs=False,
      beam_options=beam_options, num_shards=num_shards)
  builder.download_and_prepare(download_config=download_config)
  return builder


def _registered(config, registered):
  """The registered config of the same name (tfds allows no other).

  Raises:
    SystemExit: the name is registered with different settings.
  """
  same = [c for c in registered if c.name == config.name]
  if not same:
    return config
  fields = ('source', 'options', 'patterns', 'test_fraction',
            'frames_per_example')
  if all(getattr(config, f) == getattr(same[0], f) for f in fields):
    return same[0]
  raise SystemExit(
      f'--name {config.name} is a predefined config with its own settings '
      f'({same[0].description}); use the default options with it or choose '
      'another --name.')


def _attribute_docs(cls) -> dict[str, str]:
  """'name: text' lines of a Google-style 'Attributes:' docstring section."""
  section = cls.__doc__.split('Attributes:', 1)[-1]
  docs, name = {}, None
  for line in section.splitlines():
    head, sep, text = line.strip().partition(': ')
    if sep and line.startswith('    ') and not line.startswith('      '):
      name, docs[head] = head, text
    elif name and line.strip():
      docs[name] += ' ' + line.strip()
  return docs


def _parse(argv):
  defaults = process.Options()
  p = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--input', help='input folder or glob (not for --demo)')
  p.add_argument('--data_dir', required=True, help='tfds data_dir')
  p.add_argument('--name', default=None, help='config name (dataset '
                 f'{_DATASET}/NAME); default: input folder name')
  p.add_argument('--source', choices=('videos', 'original'), default='videos')
  p.add_argument('--demo', action='store_true',
                 help='build the built-in demo dataset (carphone clip)')
  helps = _attribute_docs(process.Options)
  for field in dataclasses.fields(process.Options):
    p.add_argument(f'--{field.name}', type=type(field.default),
                   default=getattr(defaults, field.name),
                   help=f'{helps.get(field.name, "")} (default: %(default)s)')
  p.add_argument('--test_fraction', type=float, default=0.05)
  p.add_argument('--frames_per_example', type=int, default=32,
                 help='split longer videos into examples spanning the video')
  p.add_argument('--workers', type=int, default=None,
                 help='processes (default: all cores)')
  p.add_argument('--work_dir', default=None)
  p.add_argument('--num_shards', type=int, default=None)
  p.add_argument('--beam', action='store_true', help='run on Apache Beam')
  p.add_argument('--beam_options', default='',
                 help="e.g. '--runner=DirectRunner --direct_num_workers=8'")
  p.add_argument('--overwrite', action='store_true')
  p.add_argument('--retry_skipped', action='store_true')
  p.add_argument('--no_progress', action='store_true')
  args = p.parse_args(argv)
  if not args.demo and not args.input:
    p.error('--input is required unless --demo')
  return args


def main(argv=None) -> None:
  args = _parse(argv)
  from data_prep import builder as builder_lib  # pylint: disable=g-import-not-at-top
  manual_dir, patterns = (None, ()) if args.demo else split_glob(args.input)
  if args.demo:
    config = builder_lib.DEMO_CONFIG
  else:
    options = process.Options(**{f.name: getattr(args, f.name)
                                 for f in dataclasses.fields(process.Options)})
    name = args.name or os.path.basename(os.path.normpath(manual_dir))
    config = builder_lib.TalkingHeadsConfig(
        name=name, source=args.source, options=options, patterns=patterns,
        test_fraction=args.test_fraction,
        frames_per_example=args.frames_per_example,
        description=f'{args.source} from {args.input}')
    config = _registered(config, builder_lib.TalkingHeads.BUILDER_CONFIGS)
  builder = build_dataset(
      config, args.data_dir, manual_dir, work_dir=args.work_dir,
      num_workers=args.workers, use_beam=args.beam,
      beam_options=args.beam_options if args.beam else None,
      overwrite=args.overwrite, retry_skipped=args.retry_skipped,
      progress=not args.no_progress, num_shards=args.num_shards)
  info = builder.info
  print(f'dataset: {builder.data_dir}  (dataset_name='
        f"'{_DATASET}/{config.name}')")
  for split, split_info in info.splits.items():
    print(f'  {split}: {split_info.num_examples} videos, '
          f'{split_info.num_shards} files')
  summary = info.metadata.get('summary')
  if summary:
    print('summary:', json.dumps(summary, indent=1))
  print('report:', os.path.join(info.metadata.get('work_dir', '?'),
                                'report.jsonl'))


if __name__ == '__main__':
  main()
