"""TorchScript files of the per-frame networks, for every family: one atomic save, one NHWC runner.

Importing this module imports torch (the CPU build is a test and export dependency, not a runtime one).
"""

import os
import pathlib
from typing import Callable, Tuple

import numpy as np
import torch


def save_scripted(module: torch.nn.Module, path: os.PathLike) -> pathlib.Path:
  """`torch.jit.script`s the module in eval mode and writes it to a temporary name, then renames it."""
  path = pathlib.Path(path)
  scripted = torch.jit.script(module.eval())
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp')
  torch.jit.save(scripted, str(tmp))
  tmp.replace(path)
  return path


def image_runner(path: os.PathLike) -> Callable[[np.ndarray], Tuple[np.ndarray, ...]]:
  """A callable (N, S, S, C) float32 images -> the module's outputs (one tensor or a tuple) as NHWC arrays,
  for a file whose module maps NCHW images to NCHW images."""
  module = torch.jit.load(str(path))

  def run(images: np.ndarray) -> Tuple[np.ndarray, ...]:
    with torch.no_grad():
      nchw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(images, np.float32), -1, 1)))
      outputs = module(nchw)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return tuple(o.permute(0, 2, 3, 1).numpy() for o in outputs)
  return run
