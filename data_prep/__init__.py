"""Dataset building: talking-head videos -> face crops, keypoints, masks -> tfds TFRecords.

Entry points (see data_prep/README.md):

* ``python -m data_prep.fetch_models``: setup step, the segmentation model.
* ``python -m data_prep.build``: videos / frame folders / the original's
  layout -> the ``talking_heads`` tfds dataset, on local cores or Beam.

The face processing itself (detection, landmarks, the crop rule, segmentation,
image helpers) is the library ``bilayer_jax.face``, shared with inference and
evaluation; this package holds only what builds datasets: sources, the
per-video processing, the runner, the tfds builder, the original-layout
importer, the demo dataset and model fetching.
"""
