"""Helpers the notebooks in `colabs/` call, so that no logic lives only in a notebook (they are tested here).

`install` sets up a fresh Colab runtime (standard library only: it runs before anything is installed),
`runtime` detects CPU/GPU/TPU and picks sizes, `media` finds inputs (built-in samples, uploads, files),
`display` shows images, videos, TensorBoard scalars and logged image grids inline, and `workflows` wraps
training, official-weight import, animation and export into notebook-sized steps.
"""

import os

# The notebooks import TensorFlow (tf.data, the TFLite converter) through these modules: its C++ INFO and
# WARNING chatter would bury the notebooks' output, and the level must be set before TF loads.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
