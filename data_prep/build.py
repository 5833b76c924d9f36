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

Before it creates any folder or starts tfds, the build checks its inputs: the
input folder exists and holds at least one video whose first frame decodes,
the output folders can be created, the name is a valid config name and the
numeric options are in range. A bad input, or inputs of which no video turns
out usable, ends with one line ``error: ...`` and exit status 2. A build that
fails after tfds started removes what it created (empty folders, tfds's
``incomplete.*`` folders) but keeps the records of processed videos, so a
re-run resumes, and any previously complete dataset (``--overwrite`` restores
it). The summary counts, per split, the videos kept, the examples written
(longer videos give several) and the videos skipped, by reason.
"""

import contextlib
import dataclasses
import glob
import json
import os
import pathlib
import re
import shlex
import shutil
import sys

from absl import flags

from bilayer_jax import cli
from bilayer_jax import errors
from bilayer_jax.face import crop as crop_lib
from data_prep import original
from data_prep import process
from data_prep import runner
from data_prep import sources

_DATASET = 'talking_heads'
# Allowed (lowest, highest) value of each numeric option; None: no highest.
_RANGES = {
    'image_size': (1, None), 'seg_erode': (0, None),
    'redetect_every': (1, None), 'jpeg_quality': (1, 100),
    'frame_stride': (1, None), 'max_frames': (0, None),
    'min_frames': (1, None), 'min_face_size': (0, None),
    'min_input_side': (1, None), 'test_fraction': (0, 1),
    'frames_per_example': (0, None), 'workers': (1, None),
    'num_shards': (1, None)}
# What tfds accepts as the config in a dataset name 'talking_heads/NAME'.
_NAME = re.compile(r'\w[\w+.-]*')


class InputError(errors.UserError):
  """A flag or input path of the build is wrong; the message names it."""


def split_glob(path: str) -> tuple[str, tuple[str, ...]]:
  """'/a/b/*/c*.mp4' -> ('/a/b', ('*/c*.mp4',)); plain paths -> (path, ())."""
  path = os.path.expanduser(path)
  if not glob.has_magic(path):
    return path, ()
  parts = path.split(os.sep)
  i = next(i for i, p in enumerate(parts) if glob.has_magic(p))
  return os.sep.join(parts[:i]) or os.sep, (os.sep.join(parts[i:]),)


def check_inputs(config, data_dir: str, manual_dir: str | None = None, *,
                 work_dir: str | None = None, num_workers: int | None = None,
                 num_shards: int | None = None) -> None:
  """Checks what a build needs before it creates anything (see build_dataset).

  Raises:
    InputError: a numeric option, the name or an output folder is wrong, or
      the input folder is missing or not in the expected layout.
    sources.NoUsableVideoError: no input video yields a frame.
  """
  numbers = dict(dataclasses.asdict(config.options),
                 test_fraction=config.test_fraction,
                 frames_per_example=config.frames_per_example,
                 workers=num_workers, num_shards=num_shards)
  for flag, (low, high) in _RANGES.items():
    _check_range(flag, numbers.get(flag), low, high)
  if config.options.crop_style not in crop_lib.CROP_STYLES:
    raise InputError(f'--crop_style {config.options.crop_style!r}: expected one of {", ".join(crop_lib.CROP_STYLES)}')
  if not _NAME.fullmatch(config.name):
    raise InputError(
        f'--name {config.name!r}: expected a letter or digit, then letters, '
        'digits or _ . + - '
        f'(the dataset is read as {_DATASET}/NAME; the default NAME is the '
        'input folder\'s name)')
  _check_writable('--data_dir', data_dir)
  if work_dir:
    _check_writable('--work_dir', work_dir)
  if config.source != 'demo':
    _check_input(config, manual_dir)


def _check_range(flag: str, value, low, high) -> None:
  if value is None or (value >= low and (high is None or value <= high)):
    return
  kind = 'an integer' if isinstance(value, int) else 'a number'
  expected = (f'{kind} from {low} to {high}' if high is not None else
              f'{kind} >= {low}')
  raise InputError(f'--{flag} {value}: expected {expected}')


def _check_writable(flag: str, path: str) -> None:
  """The folder exists and is writable, or can be created."""
  path = os.path.abspath(os.path.expanduser(path))
  existing = path
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise InputError(f'{flag} {path}: {existing} is not a folder')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise InputError(f'{flag} {path}: {existing} is not writable')


def _check_input(config, root: str | None) -> None:
  """The input folder exists and holds something the build can use."""
  if not root:
    raise InputError('--input: missing; expected a folder of videos')
  if not os.path.isdir(root):
    problem = 'is not a folder' if os.path.exists(root) else 'does not exist'
    raise InputError(
        f'--input {root}: {problem}; expected a folder of videos or frame '
        'folders, or a quoted glob below one')
  if config.source == 'original':
    try:
      jobs = original.discover(root)
    except FileNotFoundError as e:
      raise InputError(f'--input {e}') from e
    if not jobs:
      raise InputError(f'--input {root}: no PERSON/VIDEO/SEQ folder under '
                       'imgs/train or imgs/test')
    return
  jobs, ignored = sources.discover(root, config.patterns,
                                   config.test_fraction)
  sources.check_usable(os.path.join(root, *config.patterns), jobs,
                       len(ignored))


def build_dataset(config, data_dir: str, manual_dir: str | None = None, *,
                  work_dir: str | None = None, num_workers: int | None = None,
                  use_beam: bool = False, beam_options=None,
                  overwrite: bool = False, retry_skipped: bool = False,
                  progress: bool = True, num_shards: int | None = None):
  """Builds (or resumes) a talking_heads dataset; returns the tfds builder.

  The inputs are checked first (``check_inputs``). If the build then fails,
  what it created is removed, except the records of processed videos (a
  re-run resumes) and a previous complete dataset (see the module doc).

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

  Raises:
    errors.UserError: bad inputs (InputError), no usable video
      (sources.NoUsableVideoError), a missing backend or model.
  """
  check_inputs(config, data_dir, manual_dir, work_dir=work_dir,
               num_workers=num_workers, num_shards=num_shards)
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
  with _undone_if_failed(builder, overwrite):
    builder.download_and_prepare(download_config=download_config)
  return builder


@contextlib.contextmanager
def _undone_if_failed(builder, overwrite: bool):
  """Removes what a failed build created (see _FailedStart)."""
  start = _FailedStart(builder, overwrite)
  try:
    yield
  except BaseException:
    start.undo()
    raise
  start.succeeded()


class _FailedStart:
  """What existed before a build, to remove what a failed build created.

  tfds deletes a dataset before rebuilding it (``overwrite``); it is set
  aside instead, and put back if the rebuild fails.
  """

  def __init__(self, builder, overwrite: bool):
    self._builder = builder
    self._data_path = pathlib.Path(builder.data_dir)
    self._dataset_dir = self._data_path.parent
    downloads = pathlib.Path(builder.data_dir_root) / 'downloads'
    # Outermost folders that tfds may create (the work folder's are known to
    # the builder only once the backends are resolved).
    self._new = [runner.first_missing(p) for p in (
        self._dataset_dir, self._dataset_dir.parent / '.config',
        downloads / 'extracted')]
    self._entries = (set(os.listdir(self._dataset_dir))
                     if self._dataset_dir.is_dir() else set())
    self._previous = None
    if overwrite and self._data_path.is_dir():
      self._previous = self._dataset_dir / f'.previous_{self._data_path.name}'
      if self._previous.exists():  # left by a killed run; data_path is newer
        shutil.rmtree(self._previous)
      self._data_path.rename(self._previous)

  def succeeded(self) -> None:
    if self._previous:
      shutil.rmtree(self._previous)

  def undo(self) -> None:
    if self._previous:
      if self._data_path.exists():
        shutil.rmtree(self._data_path)
      self._previous.rename(self._data_path)
    if self._dataset_dir.is_dir():
      for name in set(os.listdir(self._dataset_dir)) - self._entries:
        if name.startswith('incomplete.') or name == self._data_path.name:
          shutil.rmtree(self._dataset_dir / name)
    for path in self._new + [self._builder.created_work_folder]:
      if path is not None and path.is_dir():
        _prune(path)


def _prune(folder: pathlib.Path) -> None:
  """Deletes the folder but for the subfolders holding records (.npz)."""
  if not any(folder.rglob('*.npz')):
    shutil.rmtree(folder)
    return
  for child in folder.iterdir():
    if child.is_dir() and not child.is_symlink():
      _prune(child)


def _registered(config, registered):
  """The registered config of the same name (tfds allows no other).

  Raises:
    InputError: the name is registered with different settings.
  """
  same = [c for c in registered if c.name == config.name]
  if not same:
    return config
  fields = ('source', 'options', 'patterns', 'test_fraction',
            'frames_per_example')
  if all(getattr(config, f) == getattr(same[0], f) for f in fields):
    return same[0]
  raise InputError(
      f'--name {config.name}: a predefined config with its own settings '
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


_FLAG_DEFINERS = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
                  str: flags.DEFINE_string}


def _define_flags(fv: flags.FlagValues) -> None:
  """The command line's flags, on a private FlagValues (main() can then run more than once in a process)."""
  flags.DEFINE_string('input', None, 'input folder or glob (not for --demo)', flag_values=fv)
  flags.DEFINE_string('data_dir', None, 'tfds data_dir', flag_values=fv)
  flags.DEFINE_string('name', None, f'config name (dataset {_DATASET}/NAME); default: input folder name',
                      flag_values=fv)
  flags.DEFINE_enum('source', 'videos', ['videos', 'original'], 'input layout', flag_values=fv)
  flags.DEFINE_bool('demo', False, 'build the built-in demo dataset (three people, see data_prep/README.md)',
                    flag_values=fv)
  helps = _attribute_docs(process.Options)
  for field in dataclasses.fields(process.Options):
    _FLAG_DEFINERS[type(field.default)](field.name, field.default, helps.get(field.name, ''), flag_values=fv)
  flags.DEFINE_float('test_fraction', 0.05, 'share of identities hashed into the test split', flag_values=fv)
  flags.DEFINE_integer('frames_per_example', 32, 'split longer videos into examples spanning the video',
                       flag_values=fv)
  flags.DEFINE_integer('workers', None, 'processes (default: all cores)', flag_values=fv)
  flags.DEFINE_string('work_dir', None, 'folder of the per-video work files', flag_values=fv)
  flags.DEFINE_integer('num_shards', None, 'TFRecord files per split', flag_values=fv)
  flags.DEFINE_bool('beam', False, 'run on Apache Beam', flag_values=fv)
  flags.DEFINE_string('beam_options', '', "e.g. '--runner=DirectRunner --direct_num_workers=8'", flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'rebuild an existing dataset', flag_values=fv)
  flags.DEFINE_bool('retry_skipped', False, 'process videos skipped by an earlier build again', flag_values=fv)
  flags.DEFINE_bool('no_progress', False, 'no progress bar', flag_values=fv)


def _parse(argv):
  """argv (without the program name) -> the parsed flags; bad flags are a one-line user error."""
  fv = flags.FlagValues()
  _define_flags(fv)
  cli.parse_private_flags(fv, 'data_prep.build', argv, __doc__)
  if not fv.data_dir:
    raise errors.InvalidArgumentError('--data_dir is required')
  if not fv.demo and not fv.input:
    raise errors.InvalidArgumentError('--input is required unless --demo')
  return fv


def _config(args):
  """(config, input root) from the command line."""
  from data_prep import builder as builder_lib  # pylint: disable=g-import-not-at-top
  if args.demo:
    return builder_lib.DEMO_CONFIG, None
  manual_dir, patterns = split_glob(args.input)
  options = process.Options(**{f.name: getattr(args, f.name)
                               for f in dataclasses.fields(process.Options)})
  name = args.name or os.path.basename(os.path.abspath(manual_dir))
  config = builder_lib.TalkingHeadsConfig(
      name=name, source=args.source, options=options, patterns=patterns,
      test_fraction=args.test_fraction,
      frames_per_example=args.frames_per_example,
      description=f'{args.source} from {args.input}')
  config = _registered(config, builder_lib.TalkingHeads.BUILDER_CONFIGS)
  return config, manual_dir


def _plural(n: int, word: str) -> str:
  return f'{n} {word}' + ('' if n == 1 else 's')


def _split_lines(info) -> list[str]:
  """'train: 4 videos, 9 examples, 1 file (1 video skipped: unreadable)'."""
  per_split = (info.metadata.get('summary') or {}).get('splits', {})
  lines = []
  for split in sorted(set(info.splits) | set(per_split)):
    counts = per_split.get(split)
    words = [] if counts is None else [_plural(counts['videos'], 'video')]
    if split in info.splits:
      words += [_plural(info.splits[split].num_examples, 'example'),
                _plural(info.splits[split].num_shards, 'file')]
    line = f'{split}: ' + ', '.join(words)
    skipped = (counts or {}).get('skipped')
    if skipped:
      reasons = (next(iter(skipped)) if len(skipped) == 1 else ', '.join(
          f'{n} {code}' for code, n in sorted(skipped.items())))
      line += (f' ({_plural(sum(skipped.values()), "video")} skipped: '
               f'{reasons})')
    lines.append(line)
  return lines


def main(argv=None) -> None:
  """The command line (`argv` without the program name; default sys.argv[1:]); bad inputs raise
  errors.UserError, printed as one line by __main__."""
  args = _parse(sys.argv[1:] if argv is None else list(argv))
  config, manual_dir = _config(args)
  builder = build_dataset(
      config, args.data_dir, manual_dir, work_dir=args.work_dir,
      num_workers=args.workers, use_beam=args.beam,
      beam_options=args.beam_options if args.beam else None,
      overwrite=args.overwrite, retry_skipped=args.retry_skipped,
      progress=not args.no_progress, num_shards=args.num_shards)
  info = builder.info
  print(f'dataset: {builder.data_dir}  (dataset_name='
        f"'{_DATASET}/{config.name}')")
  for line in _split_lines(info):
    print('  ' + line)
  summary = info.metadata.get('summary')
  if summary:
    print('summary:', json.dumps(summary, indent=1))
  print('report:', os.path.join(info.metadata.get('work_dir', '?'),
                                'report.jsonl'))


if __name__ == '__main__':
  cli.user_errors_as_one_line(main)()
