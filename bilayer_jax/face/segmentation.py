"""Person/foreground segmentation backends behind one interface.

The original computed masks with Graphonomy (20-class human parsing) as
``1 - P(background)`` on the 256² crop, followed by a 5x5 grayscale erosion
(docs/model.md#external-networks). Graphonomy's weights are not obtainable offline, so the default
here is MediaPipe's selfie segmentation: a learned person-vs-background model
(256x256 input, one sigmoid output) that, like ``1 - P(background)``, marks the
whole person: face, hair, neck, shoulders and clothes. See data_prep/README.md
for how the two differ.

Backends:

* ``mediapipe_selfie``: the .tflite from the mediapipe 0.10.21 wheel, fetched
  at setup by ``python -m data_prep.fetch_models`` and run on ai-edge-litert.
* ``tflite:/path/model.tflite``: any user TFLite segmenter with one NHWC
  float input and one output: one channel = foreground probability, or
  several = softmax class scores with background in channel 0.
* ``module.path:factory``: a Python hook; ``factory(**kwargs)`` must return an
  object with ``segment(crop) -> (H, W) float32 in [0, 1]`` and ``info()``.
  ``register_segmentation_backend`` adds named backends the same way.
"""

from collections.abc import Callable
import importlib
import os

import cv2
import numpy as np

from bilayer_jax import errors
from bilayer_jax.face import images
from bilayer_jax.face import model_files


class SegmentationBackend:
  """Interface: soft foreground mask of a uint8 RGB face crop."""

  name = 'base'

  def segment(self, crop: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 mask in [0, 1]."""
    raise NotImplementedError

  def info(self) -> dict[str, str]:
    raise NotImplementedError


class TFLiteSegmentation(SegmentationBackend):
  """Runs a single-input, single-output TFLite segmenter on ai-edge-litert.

  Args:
    model_path: the .tflite file.
    input_range: (lo, hi) the [0, 255] pixels are mapped to.
    erode: diameter of the disc-shaped kernel of a grayscale erosion applied
      to the mask afterwards; 0 disables it. The original used 5.
    num_threads: interpreter threads (1 per worker process is fastest when
      all cores already run workers).
  """

  name = 'tflite'

  def __init__(self, model_path: str, input_range=(0.0, 1.0), erode: int = 0,
               num_threads: int = 1):
    from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(model_path):
      raise model_files.ModelNotFoundError(f'no TFLite model at {model_path}')
    self.model_path = model_path
    self._interp = interpreter.Interpreter(model_path=model_path,
                                           num_threads=num_threads)
    self._interp.allocate_tensors()
    inp, = self._interp.get_input_details()
    out, = self._interp.get_output_details()
    self._in, self._out = inp['index'], out['index']
    _, self._h, self._w, _ = inp['shape']
    lo, hi = input_range
    self._scale, self._offset = (hi - lo) / 255.0, lo
    self.erode = erode
    self._kernel = (cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                              (erode, erode))
                    if erode else None)

  def info(self):
    import ai_edge_litert  # pylint: disable=g-import-not-at-top
    return {'name': self.name, 'model': os.path.basename(self.model_path),
            'runtime': f'ai-edge-litert {ai_edge_litert.__version__}',
            'erode': str(self.erode)}

  def _to_mask(self, out: np.ndarray) -> np.ndarray:
    if out.shape[-1] == 1:
      return out[..., 0]
    e = np.exp(out - out.max(-1, keepdims=True))
    return 1.0 - e[..., 0] / e.sum(-1)

  def segment(self, crop):
    crop = images.to_rgb(crop)
    h, w = crop.shape[:2]
    x = crop
    if (h, w) != (self._h, self._w):
      x = cv2.resize(crop, (self._w, self._h), interpolation=cv2.INTER_AREA)
    x = x.astype(np.float32) * np.float32(self._scale) + np.float32(
        self._offset)
    self._interp.set_tensor(self._in, x[None])
    self._interp.invoke()
    mask = self._to_mask(self._interp.get_tensor(self._out)[0])
    mask = np.clip(mask, 0.0, 1.0).astype(np.float32)
    if (h, w) != mask.shape:
      mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    if self._kernel is not None:
      mask = cv2.erode(mask, self._kernel)
    return mask


class MediapipeSelfieSegmentation(TFLiteSegmentation):
  """MediaPipe selfie segmentation (general model, 256x256, [0, 1] input).

  Mirrors MediaPipe's own graph: the image is stretched to 256x256 without
  keeping the aspect ratio, scaled to [0, 1], and the model's sigmoid output
  is resized back to the crop.
  """

  name = 'mediapipe_selfie'

  def __init__(self, erode: int = 0, num_threads: int = 1,
               model_dir: str | None = None):
    path = model_files.model_path('selfie_segmentation', model_dir)
    super().__init__(str(path), (0.0, 1.0), erode, num_threads)

  def info(self):
    spec = model_files.MODELS['selfie_segmentation']
    return dict(super().info(), name=self.name, source=spec.requirement,
                sha256=spec.sha256, license=spec.license)


_BACKENDS: dict[str, Callable[..., SegmentationBackend]] = {
    'mediapipe_selfie': MediapipeSelfieSegmentation,
}


def register_segmentation_backend(
    name: str, factory: Callable[..., SegmentationBackend]) -> None:
  """Makes a user backend available to get_segmentation_backend and the CLI."""
  _BACKENDS[name] = factory


def get_segmentation_backend(name: str = 'mediapipe_selfie',
                             **kwargs) -> SegmentationBackend:
  """Builds a backend from a registered name, ``tflite:PATH`` or ``mod:fn``.

  Raises:
    bilayer_jax.face.model_files.ModelNotFoundError: a model file is missing.
  """
  if name in _BACKENDS:
    return _BACKENDS[name](**kwargs)
  if name.startswith('tflite:'):
    return TFLiteSegmentation(name[len('tflite:'):], **kwargs)
  if ':' in name:
    module, attr = name.split(':', 1)
    return getattr(importlib.import_module(module), attr)(**kwargs)
  raise errors.InvalidArgumentError(
      f'unknown segmentation backend {name!r}; known: '
      f'{", ".join(sorted(_BACKENDS))}, tflite:PATH, module:fn')
