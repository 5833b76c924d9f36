"""Preprocessing: talking-head videos -> face crops, keypoints, masks -> tfds.

Entry points (see data_prep/README.md):

* ``python -m data_prep.fetch_models``: setup step, the segmentation model.
* ``python -m data_prep.build``: videos / frame folders / the original's
  layout -> the ``talking_heads`` tfds dataset, on local cores or Beam.

Modules shared with the inference API: ``landmarks`` (face + 68 landmarks),
``crop`` (the original's inference crop), ``segmentation`` (person masks).
"""
