"""The LPD family on data cropped by the official face-box rule: the demo dataset built with
`crop_style='latentpose'`, meta-training records the crop style in the params, fine-tuning and driving crop the
same way, and the per-frame driving path runs the face detector only (no landmark predictor)."""

import numpy as np
import pytest

from bilayer_jax import drive as drive_cli
from bilayer_jax import finetune
from bilayer_jax import model_io
from bilayer_jax.data import input_pipeline
from bilayer_jax.face import landmarks as landmarks_lib
from bilayer_jax.face import model_files
from bilayer_jax.inference import lpd_animator
from bilayer_jax.inference import preprocess
from bilayer_jax.inference import video
from bilayer_jax.train import loop
from data_prep import demo

import train_utils

LATENTPOSE = 'talking_heads/demo_latentpose'


@pytest.fixture(scope='module')
def latentpose_data_dir(demo_data_dir):
  return demo.ensure_demo_dataset(demo_data_dir, LATENTPOSE)


@pytest.fixture(scope='module')
def latentpose_run(latentpose_data_dir, tmp_path_factory):
  config = train_utils.tiny_lpd_config(latentpose_data_dir, num_steps=2)
  config.data.name = LATENTPOSE
  workdir = tmp_path_factory.mktemp('lpd_latentpose')
  loop.train_and_evaluate(config, str(workdir))
  return workdir


@pytest.fixture()
def predictions(monkeypatch):
  """Counts dlib landmark predictions (the shape predictor's calls)."""
  calls = []
  predict = landmarks_lib.DlibBackend._predict  # pylint: disable=protected-access

  def counting(self, gray, box):
    calls.append(box)
    return predict(self, gray, box)

  monkeypatch.setattr(landmarks_lib.DlibBackend, '_predict', counting)
  return calls


def test_the_demo_data_in_both_crop_styles(demo_data_dir, latentpose_data_dir):
  assert input_pipeline.dataset_crop_style(demo_data_dir, demo.DEMO_DATASET_NAME) == 'original'
  assert input_pipeline.dataset_crop_style(latentpose_data_dir, LATENTPOSE) == 'latentpose'
  builder = input_pipeline.load_builder(latentpose_data_dir, LATENTPOSE)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train': 15, 'test': 4, 'unseen': 3}
  # Frames where dlib's detector alone finds no box (it tracks landmarks through them) are dropped.
  assert builder.info.metadata['summary']['frames_kept'] >= 650


@pytest.mark.slow
def test_train_finetune_and_drive_without_landmarks(latentpose_run, predictions, tmp_path):
  params = latentpose_run / 'params'
  _, info = model_io.load_config(str(params))
  assert info['metadata']['crop_style'] == 'latentpose'
  anim = lpd_animator.LPDAnimator.from_params(str(params))
  assert anim.preprocessor.crop_style == 'latentpose'

  man_video = str(model_files.model_path('single_face_video'))
  sources = finetune.read_sources(man_video, 2, train_utils.TINY_LPD.image_size, 'dlib', 'latentpose')
  tuned = finetune.finetune(str(params), sources, str(tmp_path / 'ft'),
                            finetune.Settings(steps=2, checkpoint_every=2, progress=False))
  _, tuned_info = model_io.load_config(tuned['params'])
  assert tuned_info['metadata']['crop_style'] == 'latentpose' and tuned_info['metadata']['finetuned']

  del predictions[:]
  out = tmp_path / 'man_driven_by_woman.mp4'
  # The source may be a clip of the person (its first frame): with fine-tuned params it only gives the pose
  # before the driver's first face.
  summary = drive_cli.drive(tuned['params'], man_video, str(model_files.model_path('pexels_woman_video')),
                            str(out), max_frames=6, progress=False, side_by_side=True, landmarks='dlib')
  assert summary['frames'] == 6 and len(list(video.read_video(out))) == 6
  # The source photo's face only: the driver's 6 frames were cropped from the detector's boxes alone.
  assert len(predictions) == len(summary['faces'])


def test_driver_crops_follow_the_crop_style(predictions):
  frames = list(video.read_video(str(model_files.model_path('pexels_woman_video')), 3))
  boxed = preprocess.FacePreprocessor(64, 'dlib', crop_style='latentpose')
  crops = [crop for _, crop in boxed.driver_crops(frames)]
  assert len(crops) == 3 and all(c.shape == (64, 64, 3) for c in crops) and not predictions
  marked = preprocess.FacePreprocessor(64, 'dlib')
  crops_from_landmarks = [crop for _, crop in marked.driver_crops(frames)]
  assert len(predictions) == 3 and all(c.shape == (64, 64, 3) for c in crops_from_landmarks)
  assert np.abs(crops[0].astype(int) - crops_from_landmarks[0].astype(int)).mean() > 5  # different rules
  # Families that read keypoints (bi-layer, FSTH) trained on latent-pose data: the same crop, keypoints in it.
  posed = list(boxed.driver_poses(frames))
  np.testing.assert_array_equal(posed[0][2], crops[0])
  assert posed[0][1].shape == (136,) and np.abs(posed[0][1]).max() < 1
  with pytest.raises(preprocess.OptionError, match="crop style 'square'"):
    preprocess.FacePreprocessor(64, crop_style='square')
