"""Training data: input pipeline, stickman rendering, sample media.

Modules (imported explicitly; ``input_pipeline`` imports TensorFlow,
``stickman`` only numpy and OpenCV):

* ``input_pipeline``: ``create_dataset(...)`` -> tf.data batches from the
  ``talking_heads`` TFRecords that ``python -m data_prep.build`` writes, and
  ``make_global_batch(batch, sharding)`` for multi-host meshes.
* ``stickman``: ``draw_stickmen(poses, image_size)``, pixel-identical to the
  original's renderer.
* the demo dataset (three people) is built by ``data_prep.demo.ensure_demo_dataset()``.

A batch is a dict of float32 NHWC arrays (B examples, n source frames, T
target frames, S = image_size)::

  source_imgs      (B, n, S, S, 3) in [-1, 1]
  source_segs      (B, n, S, S, 1) in [0, 1]
  source_poses     (B, n, 136)     68 (x, y) keypoints in [-1, 1]
  source_stickmen  (B, n, S, S, 3) in [-1, 1]
  target_imgs, target_segs, target_poses, target_stickmen: same with T.
"""
