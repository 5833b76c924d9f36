"""Evaluation metrics against independent references: scikit-image (PSNR, SSIM), a PyTorch LPIPS written here
from the same weights, dlib's own face-chip pipeline (CSIM), hand-computed NME."""

import pickle

import numpy as np
import pytest
from skimage import data as skdata
from skimage import metrics as skmetrics
import torch
import torch.nn.functional as F

from bilayer_jax.evaluators import fid as fid_lib
from bilayer_jax.evaluators import identity
from bilayer_jax.evaluators import image_metrics
from bilayer_jax.evaluators import keypoint_error
from bilayer_jax.evaluators import lpips as lpips_lib
from bilayer_jax.evaluators import metrics as metrics_lib
from bilayer_jax.evaluators import protocol
from bilayer_jax.face import images as images_lib
from bilayer_jax.face import landmarks as landmarks_lib


@pytest.fixture(scope='module')
def image_pairs():
  """Real image crops in [-1, 1] and distorted versions (noise, blur-ish shift, contrast)."""
  rng = np.random.RandomState(0)
  astro = images_lib.resize_bicubic(skdata.astronaut(), 96).astype(np.float32) / 127.5 - 1
  coffee = images_lib.resize_bicubic(skdata.coffee()[:, 100:500], 96).astype(np.float32) / 127.5 - 1
  a = np.stack([astro, astro, coffee])
  b = np.stack([np.clip(astro + rng.normal(0, 0.1, astro.shape), -1, 1), np.roll(astro, 3, axis=1),
                coffee * 0.7]).astype(np.float32)
  return a, b


def test_psnr_ssim_l1_match_scikit_image(image_pairs):
  a, b = image_pairs
  ua, ub = (a + 1) / 2, (b + 1) / 2
  psnr = np.asarray(image_metrics.psnr(ua, ub))
  ssim = np.asarray(image_metrics.ssim(ua, ub))
  l1 = np.asarray(image_metrics.l1(ua, ub))
  for i in range(len(a)):
    ref_psnr = skmetrics.peak_signal_noise_ratio(ua[i].astype(np.float64), ub[i].astype(np.float64), data_range=1)
    ref_ssim = skmetrics.structural_similarity(ua[i].astype(np.float64), ub[i].astype(np.float64), data_range=1,
                                               channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                               use_sample_covariance=False)
    np.testing.assert_allclose(psnr[i], ref_psnr, rtol=1e-4)
    np.testing.assert_allclose(ssim[i], ref_ssim, atol=2e-4)
    np.testing.assert_allclose(l1[i], np.abs(ua[i] - ub[i]).mean(), rtol=1e-4)  # float32 sums, any order


def _torch_lpips(weights, a, b):
  """LPIPS(vgg) written directly from the paper's definition, in PyTorch (NCHW)."""
  convs = weights['VGG16_0']
  plan = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512]
  taps = {1, 4, 8, 12, 16}  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (positions in `plan`)
  shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
  scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)

  def features(x):
    x = (torch.from_numpy(x).permute(0, 3, 1, 2) - shift) / scale
    feats, conv = [], 0
    for pos, item in enumerate(plan):
      if item == 'M':
        x = F.max_pool2d(x, 2)
        continue
      w = torch.from_numpy(np.asarray(convs[f'Conv_{conv}']['kernel'])).permute(3, 2, 0, 1)
      x = F.relu(F.conv2d(x, w, torch.from_numpy(np.asarray(convs[f'Conv_{conv}']['bias'])), padding=1))
      conv += 1
      if pos in taps:
        feats.append(x)
    return feats

  total = 0
  for layer, (fa, fb) in enumerate(zip(features(a), features(b))):
    na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    lin = torch.from_numpy(np.asarray(weights[f'NetLinLayer_{layer}']['Conv_0']['kernel'])).reshape(1, -1, 1, 1)
    total = total + ((na - nb) ** 2 * lin).sum(1).mean((1, 2))
  return total.numpy()


def test_lpips_matches_an_independent_torch_computation(image_pairs):
  a, b = image_pairs
  model = lpips_lib.LPIPS()
  with open(lpips_lib.bundled_weights_path(), 'rb') as f:
    weights = pickle.load(f)
  ours = model(a, b)
  np.testing.assert_allclose(ours, _torch_lpips(weights, a, b), rtol=1e-4, atol=1e-6)
  assert np.all(model(a, a) < 1e-6)
  # A stronger distortion of the same image is farther.
  assert model(a[:1], np.clip(a[:1] + 0.3, -1, 1))[0] > model(a[:1], np.clip(a[:1] + 0.05, -1, 1))[0]


def test_lpips_weights_errors_name_the_layer(tmp_path):
  with open(lpips_lib.bundled_weights_path(), 'rb') as f:
    weights = pickle.load(f)
  weights['NetLinLayer_2']['Conv_0']['kernel'] = np.zeros((1, 1, 128, 1), np.float32)
  bad = tmp_path / 'bad.ckpt'
  bad.write_bytes(pickle.dumps(weights))
  with pytest.raises(lpips_lib.LpipsWeightsError, match=r'NetLinLayer_2/Conv_0/kernel: expected \(1, 1, 256, 1\)'):
    lpips_lib.load_lpips_weights(bad)
  with pytest.raises(lpips_lib.LpipsWeightsError, match='not found'):
    lpips_lib.load_lpips_weights(tmp_path / 'missing.ckpt')


@pytest.fixture(scope='module')
def faces():
  """Two real people at 256 px with their dlib landmarks: the astronaut (Eileen Collins) and the man of the
  carphone clip (its first frame, the face cropped by the data pipeline's rule)."""
  from bilayer_jax.inference import video  # pylint: disable=g-import-not-at-top
  from bilayer_jax.face import crop as crop_lib  # pylint: disable=g-import-not-at-top
  from bilayer_jax.data import samples  # pylint: disable=g-import-not-at-top
  backend = landmarks_lib.get_landmark_backend('dlib')
  frame = next(iter(video.read_video(samples.carphone_path(), 1)))
  carphone, _ = crop_lib.crop_face(frame, backend.detect(frame), 256)
  astronaut = images_lib.resize_bicubic(skdata.astronaut()[:400, 50:450], 256)
  return {name: (img, backend.detect(img)) for name, img in (('astronaut', astronaut), ('carphone', carphone))}


def test_dlib_csim_matches_dlibs_own_face_chip_pipeline_and_separates_identities(faces):
  import dlib  # pylint: disable=g-import-not-at-top
  embedder = identity.DlibFaceEmbedder()
  img, lms = faces['astronaut']
  ours = embedder(img[None].astype(np.float32) / 127.5 - 1, lms[None])[0]
  # Independent path: dlib's own landmark fit -> its face chip -> the descriptor of the chip.
  predictor = dlib.shape_predictor(landmarks_lib.dlib_model_path())
  shape = predictor(img, dlib.get_frontal_face_detector()(img, 1)[0])
  chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
  model = dlib.face_recognition_model_v1(identity.dlib_model_path())
  ref = np.asarray(model.compute_face_descriptor(chip))
  assert identity.cosine_similarity(ours[None], ref[None])[0] > 0.99
  # Same person under a photometric change scores higher than a different person.
  as_float = lambda x: x[None].astype(np.float32) / 127.5 - 1
  darker = as_float(np.round(img * 0.8).astype(np.uint8))
  same = identity.cosine_similarity(embedder(as_float(img), lms[None]), embedder(darker, lms[None]))[0]
  other_img, other_lms = faces['carphone']
  different = identity.cosine_similarity(embedder(as_float(img), lms[None]),
                                         embedder(as_float(other_img), other_lms[None]))[0]
  assert same > 0.97 and different < 0.9 and same > different


def test_nme_by_hand_and_detection_statuses(faces):
  ref = np.zeros((68, 2))
  ref[36:42] = (10, 50)
  ref[42:48] = (50, 50)  # inter-ocular distance 40
  pred = ref + np.array([3.0, 4.0])  # every point 5 px off
  assert keypoint_error.nme(pred, ref) == pytest.approx(5 / 40)

  class Scripted(landmarks_lib.LandmarkBackend):
    name = 'scripted'

    def __init__(self, answers):
      self.answers = list(answers)

    def detect(self, image):
      return self.answers.pop(0)

  # Frame 0: both found; frame 1: reference has no face (skipped); frame 2: generated has none (failure).
  kpe = keypoint_error.KeypointError(Scripted([ref * 4, pred * 4, None, ref * 4, None]), min_side=256)
  values, status = kpe(np.zeros((3, 64, 64, 3), np.float32), np.zeros((3, 64, 64, 3), np.float32))
  np.testing.assert_allclose(values[0], 5 / 40)
  assert np.isnan(values[1:]).all() and status.tolist() == [0, 2, 1]
  summary = metrics_lib.summarise({'nme_x': [values], 'nme_x_failed': [(status == 1) * 1.0],
                                   'nme_x_measurable': [(status != 2) * 1.0]})
  assert summary['nme_x'] == pytest.approx(5 / 40) and summary['nme_x_fail_rate'] == 0.5
  # Real detector: an image against itself has zero error, a shifted copy a proportional one.
  img, _ = faces['astronaut']
  dlib_kpe = keypoint_error.KeypointError('dlib')
  as_float = lambda x: x[None].astype(np.float32) / 127.5 - 1
  values, status = dlib_kpe(as_float(img), as_float(img))
  assert status[0] == 0 and values[0] == 0


def test_metric_names_and_frame_selection():
  assert metrics_lib.parse_metrics('psnr, lpips') == ('psnr', 'lpips')
  with pytest.raises(ValueError, match="unknown metrics \\['inception_score'\\]"):
    metrics_lib.parse_metrics('psnr,inception_score')
  assert protocol.select_frames(10, 0, 0) == list(range(10))
  assert protocol.select_frames(10, 3, 4) == [3, 0, 4, 6, 9]
  with pytest.raises(ValueError, match='outside a video of 5 frames'):
    protocol.select_frames(5, 5, 4)


@pytest.mark.slow  # 16 s: Inception features of real images
def test_frechet_distance_closed_form_and_fid_on_real_images(image_pairs, tmp_path):
  rng = np.random.RandomState(1)
  mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
  var1, var2 = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
  expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
  assert fid_lib.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-6)

  inception = fid_lib.InceptionFeatures(batch_size=4)
  a, b = image_pairs
  feats = inception(np.concatenate([a, b]))
  assert feats.shape == (6, 2048) and np.isfinite(feats).all()
  np.testing.assert_allclose(inception(a[:1]), feats[:1], rtol=1e-5, atol=1e-6)  # batch-independent
  # Pool3 features of the trained network: an image is closer to its mildly distorted copy than to another one.
  dist = lambda i, j: np.linalg.norm(feats[i] - feats[j])
  assert dist(0, 3) < dist(0, 2)
  assert abs(fid_lib.fid(feats, feats)) < 1e-3  # sqrtm of a rank-6 product: round-off only
  assert np.isnan(fid_lib.fid(feats[:1], feats))
  with pytest.raises(fid_lib.InceptionWeightsError, match='not found'):
    fid_lib.InceptionFeatures(tmp_path / 'missing.pt')
