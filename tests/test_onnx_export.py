"""ONNX export of the folded per-frame network: standard ops only (no GridSample, no custom domains), fp32
parity with JAX on ONNX Runtime, fp16 quality, the .json contract, and the export command's ONNX paths.

Model: the fixtures' original run (imported official-format weights, 64^2); photo: scikit-image's astronaut;
poses: the in-package talking-face clip's keypoints.
"""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import skimage.data

from bilayer_jax import errors
from bilayer_jax import export as export_cli
from bilayer_jax.inference import animator as animator_lib
from bilayer_jax.inference import folding
from bilayer_jax.inference import onnx_export
from bilayer_jax.inference import preprocess
from bilayer_jax.inference import tflite_export

# Image tolerance as for the TFLite and TorchScript exports (tests/test_export.py): the warp turns a uv
# rounding difference du (~1e-6 between runtimes) into |grad texture| * du * S / 2 of image error, and this
# texture has gradients up to ~5 per texel. The mask has no warp in its path: 1e-5.
IMAGE_ATOL = 1e-3
MASK_ATOL = 1e-5
# fp16 rounds the upsampling convolutions' phase kernels (sums of up to four 3x3 taps) where JAX's
# float16-rounded folded arrays round the taps, so the two differ by rounding order; the ONNX model may lose
# this much PSNR beyond what rounding the folded arrays costs (measured: 0.03 dB,
# docs/benchmarks.md#export-test-measurements).
FP16_MARGIN_DB = 1.0


@pytest.fixture(scope='module')
def folded(small_run):
  """(the astronaut's folded network, 16 driving poses of the in-package clip)."""
  cfg, variables, _ = small_run
  anim = animator_lib.Animator(cfg, variables['generator'],
                               preprocessor=preprocess.FacePreprocessor(cfg.image_size, landmarks='dlib'))
  return anim.fold(anim.init_avatar(skimage.data.astronaut())), export_cli.driver_poses(anim, max_frames=16)


def _jax(net, poses):
  out = folding.frame_forward(net.spec, net.arrays, poses)
  return np.asarray(out['image']), np.asarray(out['mask'])


def test_fp32_has_standard_ops_only_and_matches_jax(folded, tmp_path):
  net, poses = folded
  path = onnx_export.export_frame_model(net, tmp_path / 'frame.onnx', batch=2)
  model = onnx.load(str(path))
  ops = onnx_export.op_counts(model)
  assert 'GridSample' not in ops and 'Gather' in ops, ops  # the warp is the bordered gather
  assert {node.domain for node in model.graph.node} <= {'', 'ai.onnx'}
  assert [(o.domain, o.version) for o in model.opset_import] == [('', onnx_export.OPSET)]
  image, mask = onnx_export.OrtRunner(path)(poses)
  ref_image, ref_mask = _jax(net, poses)
  np.testing.assert_allclose(image, ref_image, atol=IMAGE_ATOL)
  np.testing.assert_allclose(mask, ref_mask, atol=MASK_ATOL)


def test_contract_describes_the_graph_and_matches_the_tflite_contract(folded, tmp_path):
  net, _ = folded
  path = onnx_export.export_frame_model(net, tmp_path / 'frame.onnx', batch=3)
  contract = json.loads(path.with_suffix('.json').read_text())
  model = onnx.load(str(path))
  shape = lambda value: [d.dim_value for d in value.type.tensor_type.shape.dim]
  assert [(io['name'], io['shape']) for io in contract['inputs']] == [(v.name, shape(v)) for v in model.graph.input]
  assert [(io['name'], io['shape']) for io in contract['outputs']] == [(v.name, shape(v)) for v in model.graph.output]
  assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
             for v in list(model.graph.input) + list(model.graph.output))
  assert contract['opset'] == onnx_export.OPSET and contract['format'] == 'onnx'
  # Field for field the TFLite per-frame contract of the same avatar, batch and quantisation.
  tflite = tflite_export.frame_contract(net, 'none', 3, baked=True, avatar_names=[])
  assert {k: contract[k] for k in tflite} == tflite
  assert contract['precision'] == tflite_export.precision_record('none', None, 0)


def test_fp16_stores_half_precision_weights_and_keeps_the_image(folded, tmp_path):
  net, poses = folded
  fp32 = onnx_export.export_frame_model(net, tmp_path / 'fp32.onnx')
  fp16 = onnx_export.export_frame_model(net, tmp_path / 'fp16.onnx', 'fp16')
  model = onnx.load(str(fp16))
  dtypes = {init.name: init.data_type for init in model.graph.initializer}
  weights = [node.input[i] for node in model.graph.node if node.op_type != 'Cast'
             for op, i in onnx_export.FP16_INPUTS if node.op_type == op]
  # Every stored weight (not a computed Gather input such as a shape) is read through a float16 -> float32 Cast.
  casts = {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == 'Cast'}
  stored = [w for w in weights if w in casts or w in dtypes]
  assert stored and all(w in casts and dtypes[casts[w]] == onnx.TensorProto.FLOAT16 for w in stored)
  # The file shrinks by what halving those weights saves (the Cast nodes cost a few bytes each).
  halved = sum(2 * onnx.numpy_helper.to_array(i).size for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT16)
  assert fp32.stat().st_size - fp16.stat().st_size > 0.95 * halved
  ref_image, _ = _jax(net, poses)
  image = onnx_export.OrtRunner(fp16)(poses)[0]
  rounded = {k: v.astype(np.float16).astype(np.float32) if 'kernel' in k or k == 'texture' else v
             for k, v in net.arrays.items()}
  rounding_psnr = export_cli.psnr(_jax(folding.FoldedFrameNet(net.spec, rounded), poses)[0], ref_image)
  assert export_cli.psnr(image, ref_image) > rounding_psnr - FP16_MARGIN_DB
  assert json.loads(fp16.with_suffix('.json').read_text())['quantize'] == 'fp16'


def test_bad_requests_are_one_line_user_errors(folded, tmp_path):
  net, poses = folded
  with pytest.raises(onnx_export.ExportError, match='supports none, fp16'):
    onnx_export.export_frame_model(net, tmp_path / 'x.onnx', 'int8')
  assert not list(tmp_path.iterdir())  # nothing written
  runner = onnx_export.OrtRunner(onnx_export.export_frame_model(net, tmp_path / 'b2.onnx', batch=2))
  for bad in (poses[:3], poses[:2, :68], poses[0]):
    with pytest.raises(errors.UserError, match=r'expected \(N, 136\) with N a multiple of .* batch 2'):
      runner(bad)


@pytest.mark.slow  # ~30 s: the command's own avatar set-up and driver pass
def test_export_cli_writes_and_checks_onnx(params_dir, photo_file, tmp_path):
  result = export_cli.export(params_dir, 'onnx', str(tmp_path / 'a.onnx'), photo_file, enhance=False,
                             landmarks='dlib')
  assert result['files'] == [str(tmp_path / 'a.onnx'), str(tmp_path / 'a.json')]
  assert result['checks']['frame']['max_abs_error'] < IMAGE_ATOL
  for kwargs, message in (({'quantize': 'int8'}, r'--quantize int8 applies to --format tflite only'),
                          ({'quantize': 'dynamic'}, 'tflite only'),
                          ({'with_init': True}, 'per-frame model only')):
    with pytest.raises(export_cli.UsageError, match=message):
      export_cli.export(params_dir, 'onnx', str(tmp_path / 'x.onnx'), photo_file, **kwargs)
  assert not list(tmp_path.glob('x*'))
  # The command line prints such an error as one line and exits 2, before loading any model.
  proc = subprocess.run([sys.executable, '-m', 'bilayer_jax.export', f'--params={params_dir}',
                         f'--source={photo_file}', '--format=onnx', '--quantize=int8', f'--out={tmp_path / "y.onnx"}'],
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == errors.EXIT_USER_ERROR, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == ['error: --quantize int8 applies to --format tflite only '
                                              '(got --format onnx)']
