"""TFLite export of both halves of inference, for phones (jax2tf -> TFLite converter, builtin ops only).

Models (all float32 interfaces; the quantised variants quantise inside):
* per-frame, baked (`export_frame_model`): one avatar's folded network with its texture as constants.
    input  `poses`  (N, 136) float32: 68 (x, y) keypoints in the face crop, each / crop size * 2 - 1
    output `image`  (N, S, S, 3) float32: lf + hf in [-1, 1] (nominal, not clamped), RGB
    output `mask`   (N, S, S, 1) float32 in [0, 1]: person mask; display = rgb * mask + bg * (1 - mask)
* per-frame, generic (`export_frame_model(..., baked=False)`): the same with the avatar arrays as inputs
  after `poses`, in `avatar_input_names(spec)` order: what the init model outputs.
* avatar init (`export_init_model`): the source crop -> the avatar arrays of the generic per-frame model,
  optionally with the texture enhancer (see `_runnable_scatter_regions` for what that takes in LiteRT).
    inputs `source_img` (1, S, S, 3) in [-1, 1] (crop / 255 * 2 - 1), `source_seg` (1, S, S, 1) in [0, 1],
    `source_stickman` (1, S, S, 3) in [-1, 1] (bilayer_jax.data.stickman rules), `source_pose` (1, 136)
Quantisation: 'fp16' (float16 weights), 'dynamic' (int8 weights, activations quantised at run time;
the last skip conv and the output heads keep float weights), 'int8' (int8 weights and activations of
the conv trunk calibrated on representative poses; the keypoint MLP, the last block's skip conv and
residual add, the final norm, the output heads and the warp stay float, see FLOAT_SCOPES and
FLOAT_FROM_SCOPES; float32 in/out). A baked int8 or dynamic model's channels are first equalised on the
representative poses (required for int8, optional for dynamic), see `bilayer_jax.inference.equalize`; the
export converts each of EQUALISATION_STRENGTHS and keeps the model closest to float on those poses.
Each export writes `<model>.json` next to the .tflite with the input/output names, shapes and ranges
(and, for per-frame models, the precision layout and the equalisation choice with its measured PSNRs).
"""

import json
import os
import pathlib
import tempfile
from typing import Callable, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from bilayer_jax import errors
from bilayer_jax.inference import equalize
from bilayer_jax.inference import folding
from bilayer_jax.models.bilayer import BilayerGenerator
from bilayer_jax.models.config import BilayerConfig

QUANTIZATIONS = ('none', 'fp16', 'dynamic', 'int8')
# Parts of the per-frame network (jax.named_scope names in folding.frame_forward) that int8 keeps in
# float: the harmonic phases (an 8-bit pose moves sin(8 pi p) by ~0.1 rad), and from the last block's skip
# conv on, everything (FLOAT_FROM_SCOPES): the heads turn small differences of the full-resolution features
# into uv, an 8-bit uv is ~1 texel at 256^2, which the warp turns into |texture gradient| of image error,
# and the texture itself stays float. Requantising the last skip's output and the features after the
# residual add, the final norm and the LeakyReLU cost several dB of image PSNR
# (docs/benchmarks.md#quantised-export-quality). Together ~6% of the multiply-adds (paper config, folded).
# Dynamic range keeps the weights under FLOAT_FROM_SCOPES (the last skip's and the heads') float, see
# `_restore_float_weights`.
FLOAT_SCOPES = ('keypoint_mlp',)
FLOAT_FROM_SCOPES = ('tail', 'heads', 'warp')
# Equalisation strengths (`equalize.equalize`) a baked int8 or dynamic export tries; it keeps the one whose
# model renders the representative poses closest to float. No strength wins on every model, for int8 or
# for dynamic (whose weights lose precision when scaled, its activations less): image PSNR vs fp32 at each
# strength in docs/benchmarks.md#quantised-export-quality.
EQUALISATION_STRENGTHS = (0.5, 1.0)
# Poses (spread over the representative set) each candidate renders to choose a strength.
SELECTION_POSES = 16


class ExportError(errors.UserError, ValueError):
  """An export request that cannot be honoured (unsupported combination, missing inputs)."""


def avatar_input_names(arrays: Mapping[str, np.ndarray]) -> List[str]:
  """The avatar-dependent folded arrays, in the generic per-frame model's input order."""
  return sorted(k for k in arrays if folding.is_avatar_array(k))


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def convert_function(fn: Callable, specs: Sequence, quantize: str,
             representative: Optional[Callable[[], Iterable[List[np.ndarray]]]] = None) -> bytes:
  """jax function -> TFLite flatbuffer bytes (builtin ops only)."""
  tf = _tf()
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  if quantize not in QUANTIZATIONS:
    raise ExportError(f'quantize={quantize!r}: expected one of {QUANTIZATIONS}')
  tf_fn = tf.function(jax2tf.convert(fn, with_gradient=False), autograph=False, input_signature=list(specs))

  def converter():
    conv = tf.lite.TFLiteConverter.from_concrete_functions([tf_fn.get_concrete_function()])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != 'none':
      conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == 'fp16':
      conv.target_spec.supported_types = [tf.float16]
    return conv

  if quantize in ('none', 'fp16'):
    return _runnable_scatter_regions(converter().convert())
  float_model = _convert_float(converter)
  if quantize == 'dynamic':
    return _runnable_scatter_regions(_restore_float_weights(converter().convert(), float_model))
  if representative is None:
    raise ExportError('int8 quantisation needs representative inputs (poses)')
  # Full-integer conv trunk; the float parts (_float_tensor_names) stay float (selective quantisation).
  from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
  keep_float = _float_tensor_names(interpreter.Interpreter(model_content=float_model))
  conv = converter()
  conv.representative_dataset = representative
  debugger = tf.lite.experimental.QuantizationDebugger(
      converter=conv, debug_dataset=representative,
      debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=keep_float))
  return _runnable_scatter_regions(debugger.get_nondebug_quantized_model())


# The TFLite ops the converter writes into a STABLEHLO_SCATTER's update region, and the StableHLO ops LiteRT's
# scatter kernel looks for there instead (it rejects the model at allocation time otherwise).
_SCATTER_REGION_OPS = {'ADD': 'STABLEHLO_ADD', 'MUL': 'STABLEHLO_MULTIPLY', 'MAXIMUM': 'STABLEHLO_MAXIMUM',
                       'MINIMUM': 'STABLEHLO_MINIMUM'}


def convert_image_function(fn: Callable, name: str, batch: int, size: int, quantize: str,
                           representative_images: Optional[np.ndarray] = None) -> bytes:
  """TFLite bytes of a per-frame function of one (batch, size, size, 3) float32 image input named `name` (the
  FSTH and LPD per-frame networks); int8 is calibrated on `representative_images`, `batch` at a time.

  Raises:
    ExportError: int8 without at least `batch` representative images, or an unknown quantisation.
  """
  tf = _tf()
  if quantize == 'int8' and (representative_images is None or len(representative_images) < batch):
    raise ExportError(f'--quantize int8 needs representative {name} (a driving video)')

  def representative():
    for i in range(0, len(representative_images) - batch + 1, batch):
      yield [np.asarray(representative_images[i:i + batch], np.float32)]

  specs = [tf.TensorSpec((batch, size, size, 3), tf.float32, name=name)]
  return convert_function(fn, specs, quantize, representative if quantize == 'int8' else None)


def _runnable_scatter_regions(model: bytes) -> bytes:
  """Rewrites the update regions of the model's STABLEHLO_SCATTER ops so that LiteRT can run them.

  The enhancer's inner gradient (the adjoint of the texture warp) is a scatter-add. The converter emits it
  as STABLEHLO_SCATTER whose update-computation subgraph holds a TFLite ADD, but LiteRT's kernel only
  recognises STABLEHLO_ADD (or _MULTIPLY, _MAXIMUM, _MINIMUM) there and fails with "Only update, Add, ...
  are currently supported". Same arithmetic, other opcode; models without scatters are returned as they are.
  """
  from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=g-import-not-at-top
  builtin = schema.BuiltinOperator
  root = schema.Model.GetRootAsModel(model, 0)
  codes = [root.OperatorCodes(i) for i in range(root.OperatorCodesLength())]
  if not any(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) == builtin.STABLEHLO_SCATTER for c in codes):
    return model
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top
  tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
  code_of = lambda op: max(tree.operatorCodes[op.opcodeIndex].builtinCode,
                           tree.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)

  def opcode_index(code: int) -> int:
    for i, existing in enumerate(tree.operatorCodes):
      if max(existing.builtinCode, existing.deprecatedBuiltinCode) == code:
        return i
    entry = schema.OperatorCodeT()
    entry.builtinCode, entry.version = code, 1
    entry.deprecatedBuiltinCode = min(code, builtin.PLACEHOLDER_FOR_GREATER_OP_CODES)
    tree.operatorCodes.append(entry)
    return len(tree.operatorCodes) - 1

  replacements = {getattr(builtin, tfl): getattr(builtin, hlo) for tfl, hlo in _SCATTER_REGION_OPS.items()}
  for graph in list(tree.subgraphs):
    for op in graph.operators:
      if code_of(op) != builtin.STABLEHLO_SCATTER:
        continue
      for region_op in tree.subgraphs[op.builtinOptions2.updateComputationSubgraphIndex].operators:
        code = code_of(region_op)
        if code in replacements:
          if getattr(region_op.builtinOptions, 'fusedActivationFunction', 0):
            raise ExportError('a scatter update region has a fused activation; LiteRT cannot run it')
          region_op.opcodeIndex = opcode_index(replacements[code])
          region_op.builtinOptionsType, region_op.builtinOptions = 0, None
  return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))


def _convert_float(converter: Callable) -> bytes:
  """The unquantised model of a quantising `converter` factory (the source of the float parts)."""
  conv = converter()
  conv.optimizations = []
  return conv.convert()


def _restore_float_weights(model: bytes, float_model: bytes) -> bytes:
  """A dynamic-range model with the int8 weights under FLOAT_FROM_SCOPES put back to float32.

  Dynamic range quantises each weighted op's input per tensor at run time. At the heads' input (the
  full-resolution features whose small differences are the warp's uv) that costs most of its error;
  restoring the heads' filter (and the last skip's) removes it (docs/benchmarks.md#quantised-export-quality).
  The converter has no per-op opt-out for dynamic range, so the filters are copied back from the float model
  and those ops run in float. (Filters under 1024 elements, as at the demo config, it leaves float anyway.)
  """
  from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top
  tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
  source = flatbuffer_utils.read_model_from_bytearray(bytearray(float_model))
  name = lambda t: t.name.decode() if isinstance(t.name, bytes) else t.name
  float_tensors = {name(t): t for t in source.subgraphs[0].tensors}
  for tensor in tree.subgraphs[0].tensors:
    original = float_tensors.get(name(tensor))
    if (tensor.type == schema.TensorType.INT8 and original is not None and
        original.type == schema.TensorType.FLOAT32 and
        any(f'/{scope}/' in name(tensor) for scope in FLOAT_FROM_SCOPES)):
      tensor.type, tensor.quantization = original.type, None
      tree.buffers[tensor.buffer].data = source.buffers[original.buffer].data
  return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))


def _float_tensor_names(float_model) -> List[str]:
  """Output names of the float model's ops that int8 keeps float: those under FLOAT_SCOPES, and every op
  downstream of one under FLOAT_FROM_SCOPES (the converter's fused ops lose the scope in their names)."""
  names = {t['index']: t['name'] for t in float_model.get_tensor_details()}
  keep = {i for i, name in names.items() if any(f'/{scope}/' in name for scope in FLOAT_SCOPES)}
  tainted = {i for i, name in names.items() if any(f'/{scope}/' in name for scope in FLOAT_FROM_SCOPES)}
  for op in float_model._get_ops_details():  # pylint: disable=protected-access  (ops in execution order)
    if op['op_name'] != 'DELEGATE' and tainted.intersection(op['inputs']):
      tainted.update(op['outputs'])
  return sorted({names[i] for i in keep | tainted})


def write_model(path: os.PathLike, model: bytes, contract: Mapping) -> pathlib.Path:
  """Writes the .tflite and its .json contract atomically (temp name, then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  for target, data in ((path.with_suffix('.json'), json.dumps(contract, indent=1).encode()), (path, model)):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{target.name}.tmp-')
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, target)
  return path


def export_frame_model(net: folding.FoldedFrameNet, path: os.PathLike, quantize: str = 'none',
                       batch: int = 1, baked: bool = True, representative_poses: Optional[np.ndarray] = None,
                       low_res_upsample_conv: bool = True) -> pathlib.Path:
  """Writes the per-frame model of a folded avatar as .tflite (+ .json contract). See module docstring.

  Args:
    net: the folded per-frame network (`Animator.fold`).
    path: output .tflite path.
    quantize: one of QUANTIZATIONS.
    batch: frames per call (fixed input shape).
    baked: bake the avatar arrays in as constants (False: they become inputs after `poses`).
    representative_poses: (K, 136) poses for int8 calibration (e.g. a driving video's keypoints); a baked
      int8 or dynamic model is also equalised on them (`equalize.equalize`, same function in float), which
      dynamic-range quantisation gains from too (its activations are quantised per tensor at run time), at
      the strength of EQUALISATION_STRENGTHS whose model renders SELECTION_POSES of them closest to float.
    low_res_upsample_conv: see `folding.frame_forward` (faster on LiteRT: docs/benchmarks.md#folded-rendering).
  """
  tf = _tf()
  spec = net.spec
  avatar_names = [] if baked else avatar_input_names(net.arrays)
  if quantize == 'int8' and (representative_poses is None or not len(representative_poses)):
    raise ExportError('--quantize int8 needs representative poses (a driving video or recorded keypoints)')
  poses = None
  if representative_poses is not None and len(representative_poses):
    poses = np.asarray(representative_poses, np.float32).reshape(-1, 136)
  specs = [tf.TensorSpec((batch, 136), tf.float32, name='poses')]
  specs += [tf.TensorSpec(net.arrays[k].shape, tf.float32, name=k) for k in avatar_names]

  def convert(net: folding.FoldedFrameNet) -> bytes:
    constants = {k: v for k, v in net.arrays.items() if k not in avatar_names}

    def forward(poses, *avatar):
      out = folding.frame_forward(spec, {**constants, **dict(zip(avatar_names, avatar))}, poses,
                                  low_res_upsample_conv=low_res_upsample_conv)
      return (out['image'], out['mask']) if spec.pred_segmentation else (out['image'],)

    def representative():
      for i in range(0, len(poses) - batch + 1, batch):
        yield [poses[i:i + batch]] + [net.arrays[k] for k in avatar_names]

    return convert_function(forward, specs, quantize, representative if quantize == 'int8' else None)

  selection = None
  # (the generic model takes the avatar arrays as the init model writes them: not equalised)
  if quantize in ('int8', 'dynamic') and baked and poses is not None:
    model, selection = _best_equalisation(net, poses, batch, convert, low_res_upsample_conv)
  else:
    model = convert(net)
  contract = frame_contract(net, quantize, batch, baked, avatar_names)
  contract['precision'] = precision_record(quantize, selection, 0 if quantize != 'int8' else len(poses))
  return write_model(path, model, contract)


def frame_contract(net: folding.FoldedFrameNet, quantize: str, batch: int, baked: bool, avatar_names) -> dict:
  """The .json contract of a per-frame model: its inputs and outputs (the precision is added by the caller)."""
  s = net.spec.image_size
  return {
      'model': 'bilayer_jax per-frame network' + (' (baked avatar)' if baked else ' (generic)'),
      'quantize': quantize,
      'inputs': [{'name': 'poses', 'shape': [batch, 136], 'dtype': 'float32',
                  'meaning': '68 (x, y) keypoints in the face crop, pixel / crop size * 2 - 1'}] +
                [{'name': k, 'shape': list(net.arrays[k].shape), 'dtype': 'float32',
                  'meaning': 'avatar array (an output of the init model)'} for k in avatar_names],
      'outputs': [{'name': 'image', 'shape': [batch, s, s, 3], 'dtype': 'float32', 'range': '[-1, 1] nominal',
                   'meaning': 'RGB = (image + 1) / 2, clamp to [0, 1]'}] +
                 ([{'name': 'mask', 'shape': [batch, s, s, 1], 'dtype': 'float32', 'range': '[0, 1]',
                    'meaning': 'person mask: rgb * mask + background * (1 - mask)'}] if net.spec.pred_segmentation
                  else []),
  }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR (dB) of two [-1, 1] images mapped to [0, 1] and clipped."""
  a, b = (np.clip((np.asarray(x, np.float64) + 1) / 2, 0, 1) for x in (a, b))
  mse = np.mean((a - b) ** 2)
  return float('inf') if mse == 0 else float(10 * np.log10(1.0 / mse))


def _best_equalisation(net: folding.FoldedFrameNet, poses: np.ndarray, batch: int,
                       convert: Callable[[folding.FoldedFrameNet], bytes], low_res_upsample_conv: bool):
  """Converts the avatar equalised at each of EQUALISATION_STRENGTHS; returns the model whose images are
  closest to float on SELECTION_POSES of the representative poses, and the record of the choice."""
  count = max(batch, min(SELECTION_POSES, len(poses)) // batch * batch)
  check = np.resize(poses[np.linspace(0, len(poses) - 1, min(count, len(poses))).astype(int)], (count, 136))
  reference = np.asarray(folding.frame_forward(net.spec, net.arrays, check,
                                               low_res_upsample_conv=low_res_upsample_conv)['image'])
  scores, models = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    for strength in EQUALISATION_STRENGTHS:
      models[strength] = convert(equalize.equalize(net, poses, strength))
      candidate = pathlib.Path(tmp) / f'strength_{strength}.tflite'
      candidate.write_bytes(models[strength])
      runner = LiteRunner(candidate)
      images = np.concatenate([runner(check[i:i + batch])[0] for i in range(0, count, batch)])
      scores[strength] = psnr(images, reference)
  best = max(scores, key=scores.get)
  return models[best], {'strength': best, 'psnr_db': {str(k): round(v, 2) for k, v in scores.items()},
                        'poses': count}


def precision_record(quantize: str, selection: Optional[Mapping], calibration_poses: int) -> Mapping:
  """The contract's record of a per-frame model's numerics: what is quantised, what stays float and why
  the avatar's weights differ from the float export's (equalisation rescales channels, same function)."""
  scopes = ', '.join(FLOAT_FROM_SCOPES)
  return {
      'none': {'weights': 'float32', 'activations': 'float32'},
      'fp16': {'weights': 'float16, dequantised to float32 at load', 'activations': 'float32'},
      'dynamic': {'weights': f'int8 per channel, except float32 under scopes {scopes}',
                  'activations': 'float32; quantised per tensor at run time where a weight is int8'},
      'int8': {'weights': 'int8 per channel in the conv trunk',
               'activations': f'int8 in the conv trunk, calibrated on {calibration_poses} poses; float32 under '
                              f'scopes {", ".join(FLOAT_SCOPES)} and from scopes {scopes} on'},
  }[quantize] | ({'equalisation_strength': selection['strength'],
                  'equalisation_image_psnr_db': selection['psnr_db'],
                  'equalisation_selection_poses': selection['poses']} if selection else {})


def export_init_model(cfg: BilayerConfig, variables: Mapping, path: os.PathLike, enhance: bool = False,
                      quantize: str = 'none') -> pathlib.Path:
  """Writes the avatar-initialisation model: source crop, mask, stickman, pose -> avatar arrays.

  Its outputs, in `avatar_input_names` order, are the extra inputs of the generic per-frame model.
  `enhance` includes the texture enhancer (its unrolled learned-gradient steps, inner gradients included).
  """
  tf = _tf()
  if enhance and 'texture_enhancer' not in variables.get('params', {}):
    raise ExportError('enhance=True, but these params have no texture_enhancer (a base-stage run); '
                      'export the init model without the enhancer')
  if quantize == 'int8':
    raise ExportError('the init model supports none/fp16/dynamic quantisation (int8 would need '
                      'representative photos and loses the texture detail)')
  gen = BilayerGenerator(cfg, with_enhancer=enhance)
  s = cfg.image_size
  names: List[str] = []

  def init(img, seg, stickman, pose):
    avatar = gen.apply(variables, img[:, None], seg[:, None], stickman[:, None], pose[:, None],
                       enhance=enhance, method=BilayerGenerator.init_avatar)
    adaptive = [tuple(a[0] for a in pair) for pair in avatar['adaptive']]
    arrays = folding.fold_arrays(cfg, variables, avatar['texture'][0], adaptive)
    names[:] = avatar_input_names(arrays)
    return tuple(arrays[k] for k in names)

  specs = [tf.TensorSpec((1, s, s, 3), tf.float32, name='source_img'),
           tf.TensorSpec((1, s, s, 1), tf.float32, name='source_seg'),
           tf.TensorSpec((1, s, s, 3), tf.float32, name='source_stickman'),
           tf.TensorSpec((1, cfg.pse_in_channels), tf.float32, name='source_pose')]
  model = convert_function(init, specs, quantize)
  contract = {
      'model': 'bilayer_jax avatar initialisation' + (' with texture enhancer' if enhance else ''),
      'quantize': quantize,
      'inputs': [{'name': 'source_img', 'shape': [1, s, s, 3], 'range': '[-1, 1]',
                  'meaning': 'face crop (bilayer_jax.face.crop rule) RGB / 255 * 2 - 1'},
                 {'name': 'source_seg', 'shape': [1, s, s, 1], 'range': '[0, 1]', 'meaning': 'person mask'},
                 {'name': 'source_stickman', 'shape': [1, s, s, 3], 'range': '[-1, 1]',
                  'meaning': 'keypoint drawing, bilayer_jax.data.stickman rules'},
                 {'name': 'source_pose', 'shape': [1, cfg.pse_in_channels], 'range': '[-1, 1]',
                  'meaning': 'keypoints as for the per-frame model'}],
      'outputs': [{'name': k} for k in names],
  }
  return write_model(path, model, contract)


class LiteRunner:
  """Runs an exported .tflite with the LiteRT interpreter; inputs/outputs in the model's declared order."""

  def __init__(self, path: os.PathLike, num_threads: Optional[int] = None):
    from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
    self.interpreter = interpreter.Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count())
    self.interpreter.allocate_tensors()
    self.inputs = self.interpreter.get_input_details()
    self.outputs = self.interpreter.get_output_details()

  def __call__(self, *inputs: np.ndarray) -> List[np.ndarray]:
    if len(inputs) != len(self.inputs):
      raise ExportError(f'the model takes {len(self.inputs)} inputs, got {len(inputs)}')
    for detail, value in zip(self.inputs, inputs):
      self.interpreter.set_tensor(detail['index'], np.asarray(value, detail['dtype']))
    self.interpreter.invoke()
    return [self.interpreter.get_tensor(d['index']) for d in self.outputs]

  def op_names(self) -> List[str]:
    """The builtin op types the model uses (for checking there are no Flex/custom ops)."""
    return sorted({op['op_name'] for op in self.interpreter._get_ops_details()})  # pylint: disable=protected-access
