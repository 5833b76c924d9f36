"""ONNX export of an avatar's folded per-frame network (poses -> image, mask), for ONNX Runtime and other
ONNX runtimes; docs/export.md#onnx-per-frame-model.

    path = export_frame_model(animator.fold(avatar), 'avatar.onnx', quantize='fp16')   # + avatar.json
    image, mask = OrtRunner(path)(poses)                        # (N, 136) -> (N, S, S, 3), (N, S, S, 1)

Route: the PyTorch FrameNet (`torch_frame_net`) with its warp rewritten as `GatherFrameNet`, exported by
`torch.onnx.export`'s dynamo exporter at opset OPSET: of the routes measured (`bench/onnx_routes.py`,
docs/benchmarks.md#onnx-export-routes-2026-12-07: this, the deprecated TorchScript-based exporter, jax2onnx)
the fewest nodes, at an ONNX Runtime latency within the measurement noise of the others'.
The warp is the bordered gather of `warp.grid_sample_shared` (zero border, clamped corner indices, one
Gather of the four corners), not GridSample: runtimes without GridSample (or with a different border rule)
run it, and it is the formulation of the TFLite export. Inputs and outputs are NHWC like the TFLite model's,
and the `.json` contract next to the `.onnx` is the TFLite per-frame contract plus `format` and `opset`.
Quantisation: 'none' (float32) or 'fp16' (kernels and texture as float16 initializers, each followed by a Cast
to float32, which runtimes fold at load: about half the file, float32 arithmetic, as TFLite's fp16).
"""

import os
import pathlib
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from bilayer_jax import errors
from bilayer_jax.inference import folding
from bilayer_jax.inference import tflite_export
from bilayer_jax.inference import torch_frame_net

# Opset 17 (ONNX Runtime 1.12 on, and the other common runtimes): the graph needs nothing newer (Gemm, Conv,
# Resize, Gather, Floor, Clip, Tanh, Sigmoid, LeakyRelu, Sin, Cos and shape ops).
OPSET = 17
QUANTIZATIONS = ('none', 'fp16')
# Ops the graph must not contain: GridSample (opset 16+) is what the bordered gather replaces.
FORBIDDEN_OPS = ('GridSample',)


class ExportError(errors.UserError, ValueError):
  """An ONNX export request that cannot be honoured (unsupported quantisation, a network without a mask)."""


class GatherFrameNet(torch_frame_net.FrameNet):
  """`FrameNet` with the warp as one gather from a zero-bordered texture table and NHWC outputs:
  (N, 136) poses -> image (N, S, S, 3), mask (N, S, S, 1); same values as `folding.frame_forward`."""

  def __init__(self, spec: folding.FrameNetSpec, arrays):
    super().__init__(spec, arrays)
    del self.texture  # read through texture_table instead
    s = spec.image_size
    self.image_size = s
    table = np.pad(np.asarray(arrays['texture'], np.float32), ((1, 1), (1, 1), (0, 0))).reshape((s + 2) ** 2, 3)
    self.register_buffer('texture_table', torch.from_numpy(np.ascontiguousarray(table)))
    grid = np.ascontiguousarray(np.transpose(folding.warp.identity_grid(s), (0, 3, 1, 2)))
    self.register_buffer('identity_grid_nchw', torch.from_numpy(grid))  # (1, 2, S, S)

  def forward(self, poses: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    y = self.heads_output(poses)
    s = self.image_size
    uv = self.identity_grid_nchw + torch.tanh(y[:, 0:2])
    # Texel coordinates exactly as warp.grid_sample_shared (PyTorch's align_corners=False unnormalisation).
    x = ((uv[:, 0] + 1) * s - 1) / 2
    v = ((uv[:, 1] + 1) * s - 1) / 2
    x0, y0 = torch.floor(x), torch.floor(v)
    wx1, wy1 = x - x0, v - y0
    wx0, wy0 = 1 - wx1, 1 - wy1
    # Table coordinates: row/column 0 and s + 1 are the zero border, anything further out clamps onto it, so
    # zero padding needs no validity masks. The flat index (< (s + 2)^2) is exact in float32.
    xs = [torch.clamp(x0 + 1 + d, 0.0, s + 1.0) for d in (0, 1)]
    ys = [torch.clamp(y0 + 1 + d, 0.0, s + 1.0) * (s + 2) for d in (0, 1)]
    index = torch.stack([ys[0] + xs[0], ys[0] + xs[1], ys[1] + xs[0], ys[1] + xs[1]]).long()  # (4, N, S, S)
    weight = torch.stack([wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1]).unsqueeze(-1)
    hf = (F.embedding(index, self.texture_table) * weight).sum(0)  # (N, S, S, 3)
    lf = torch.tanh(y[:, 2:5]).permute(0, 2, 3, 1)
    return lf + hf, torch.sigmoid(y[:, 5:6]).permute(0, 2, 3, 1)


def to_onnx(net: folding.FoldedFrameNet, batch: int = 1):
  """The folded network as an `onnx.ModelProto` (float32, fixed batch), inputs `poses`, outputs `image`, `mask`."""
  if not net.spec.pred_segmentation:
    raise ExportError('the ONNX per-frame model needs a network that predicts the mask (inf_pred_segmentation)')
  module = GatherFrameNet(net.spec, net.arrays).eval().requires_grad_(False)
  # The dynamo exporter (torch.export + onnxscript): the TorchScript-based one (dynamo=False) is deprecated and
  # writes the same ops plus a Constant node per scalar (docs/benchmarks.md#onnx-export-routes-2026-12-07).
  program = torch.onnx.export(module, (torch.zeros(batch, 136),), dynamo=True, opset_version=OPSET,
                              input_names=['poses'], output_names=['image', 'mask'], verbose=False)
  return program.model_proto


# The initializers fp16 stores in float16: (op type, input position) of the big ones. The rest (biases, the
# per-channel affines, the identity grid, the harmonic frequencies) stays float32: they are small, and the
# grid and frequencies set warp coordinates and phases, which float16 would move by up to 0.03 px at 256^2 and
# 0.008 rad with 4 harmonics (0.12 rad with 8).
FP16_INPUTS = {('Conv', 1), ('Gemm', 1), ('Gather', 0)}


def fp16_weights(model):
  """A copy of `model` whose weights (FP16_INPUTS: kernels, texture) are float16 initializers, each read
  through a Cast back to float32, so the graph's arithmetic and interface stay float32."""
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  model = onnx.ModelProto.FromString(model.SerializeToString())
  graph = model.graph
  weights = {node.input[i] for node in graph.node for op, i in FP16_INPUTS
             if node.op_type == op and len(node.input) > i}
  casts = []
  for init in graph.initializer:
    if init.name not in weights or init.data_type != onnx.TensorProto.FLOAT:
      continue
    name = init.name
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f'{name}_fp16'))
    casts.append(onnx.helper.make_node('Cast', [init.name], [name], to=onnx.TensorProto.FLOAT,
                                       name=f'{name}_to_float'))
  nodes = casts + list(graph.node)  # casts first: ONNX graphs are topologically sorted
  del graph.node[:]
  graph.node.extend(nodes)
  return model


def op_counts(model) -> Dict[str, int]:
  """{'domain::OpType' or 'OpType': count} of the model's nodes (the default domain unprefixed)."""
  counts: Dict[str, int] = {}
  for node in model.graph.node:
    key = f'{node.domain}::{node.op_type}' if node.domain not in ('', 'ai.onnx') else node.op_type
    counts[key] = counts.get(key, 0) + 1
  return dict(sorted(counts.items()))


def _check_graph(model) -> None:
  """Raises if the graph holds a forbidden or a custom-domain op, or fails the ONNX checker."""
  import onnx  # pylint: disable=g-import-not-at-top
  onnx.checker.check_model(model, full_check=True)
  bad = [op for op in op_counts(model) if '::' in op or op in FORBIDDEN_OPS]
  if bad:
    raise ExportError(f'the ONNX graph has ops outside the standard set this export promises: {bad}')


def export_frame_model(net: folding.FoldedFrameNet, path: os.PathLike, quantize: str = 'none',
                       batch: int = 1) -> pathlib.Path:
  """Writes the avatar's per-frame model as .onnx and its .json contract (atomically). See module docstring.

  Raises:
    ExportError: an unknown quantisation or a network without a mask head.
  """
  if quantize not in QUANTIZATIONS:
    raise ExportError(f'--quantize {quantize}: the ONNX export supports {", ".join(QUANTIZATIONS)}')
  model = to_onnx(net, batch)
  if quantize == 'fp16':
    model = fp16_weights(model)
  _check_graph(model)
  contract = {**tflite_export.frame_contract(net, quantize, batch, baked=True, avatar_names=[]),
              'format': 'onnx', 'opset': OPSET,
              'precision': tflite_export.precision_record(quantize, None, 0)}
  return tflite_export.write_model(path, model.SerializeToString(), contract)


class OrtRunner:
  """Runs an exported .onnx on ONNX Runtime's CPU execution provider; `run(poses)` -> [image, mask]."""

  def __init__(self, path: os.PathLike, num_threads: Optional[int] = None):
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or os.cpu_count()
    options.inter_op_num_threads = 1
    # No spinning: the export's check and the benchmarks run this beside other runtimes in one process, and
    # ONNX Runtime's idle threads spin-wait by default, starving whatever runs next (docs/benchmarks.md).
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    self.session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    self.input_name, self.batch = self.session.get_inputs()[0].name, self.session.get_inputs()[0].shape[0]

  def __call__(self, poses: np.ndarray) -> List[np.ndarray]:
    poses = np.asarray(poses, np.float32)
    if poses.ndim != 2 or poses.shape[1] != 136 or len(poses) % self.batch:
      raise ExportError(f'poses of shape {poses.shape}: expected (N, 136) with N a multiple of the model\'s '
                        f'batch {self.batch}')
    chunks = [self.session.run(None, {self.input_name: poses[i:i + self.batch]})
              for i in range(0, len(poses), self.batch)]
    return [np.concatenate(parts) for parts in zip(*chunks)]
