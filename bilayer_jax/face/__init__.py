"""Face processing shared by dataset building, inference and evaluation.

* ``detection``: one detected face (box, score, landmarks), merging and ranking detections.
* ``landmarks``: 68-point landmark backends (dlib, face-alignment, user-registered).
* ``crop``: the original's face-crop rule and how keypoints move with it.
* ``segmentation``: person-mask backends (MediaPipe selfie, any TFLite segmenter, user hooks).
* ``images``: conversions and encoders for uint8 images.
* ``model_files``: where the external model files are found, with a clear error when one is missing.
"""
