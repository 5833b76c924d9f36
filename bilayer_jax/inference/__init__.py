"""Inference: one-shot avatars from a photo, rendering, per-avatar folding, and export (TFLite, PyTorch).

* `animator.Animator`: load params, `init_avatar(photo)`, `render(avatar, poses)`, `drive(avatar, frames)`.
* `preprocess.FacePreprocessor`: detection, the original's crop, keypoints, masks, stickmen.
* `folding`: the avatar's static per-frame network (136 keypoints -> image + mask).
* `tflite_export`, `torch_frame_net`: that network for phones (TFLite) and PyTorch.
"""
