r"""Export an avatar's per-frame network to TFLite, PyTorch or ONNX, or params to the original's run layout.

    python -m bilayer_jax.export --params DIR --source photo.jpg --format tflite [--quantize fp16|dynamic|int8] \
        --out avatar.tflite [--with_init] [--driver video.mp4]
    python -m bilayer_jax.export --params DIR --source photo.jpg --format torch --out avatar.pt
    python -m bilayer_jax.export --params DIR --source photo.jpg --format onnx [--quantize fp16] --out avatar.onnx
    python -m bilayer_jax.export --params DIR --format original --out runs/exported_main [--epoch 2225] \
        [--enh_out runs/exported_enhancer --enh_epoch 1225]

The photo's largest face is exported unless --face_index (0 = largest) or --face_box x0,y0,x1,y1 choose
another (as in `bilayer_jax.drive`, with the same --detector and --landmarks). --driver is checked (opened,
first frame decoded) before the model is loaded, and rejected when no frame, or more than
--max_faceless_fraction of its frames, has a face (`preprocess.FaceCoverage`, shared with drive).

fsth params: the person's generator (landmark sketch -> image) with its AdaIN parameters baked in, as
  tflite (`bilayer_jax.inference.fsth_export`) or torch (`fsth_torch.FSTHFrameNet`); the check runs it on
  the driver's sketches.
lpd params: the person's folded per-frame network (driver face crop -> image + mask; pose-encoder BatchNorms,
  spectral norms and the identity folded in) as tflite (`bilayer_jax.inference.lpd_export`) or torch
  (`lpd_torch.LPDFrameNet`); the check runs it on the driver's face crops.
tflite: the folded per-frame network of the photo's avatar (136 keypoints -> image + mask), with a .json
  contract next to it; --with_init also writes <out>_init.tflite (crop, mask, stickman, pose -> avatar
  arrays; with the texture enhancer unless --noenhance) and <out>_generic.tflite (poses + avatar arrays ->
  image + mask), so both halves run on a phone.
  int8 is calibrated on the keypoints of --driver (default: the in-package talking-face clip); int8 and
  dynamic models are first equalised on them (same function in float, less quantisation error), at the
  strength whose model renders them closest to float (recorded in the .json contract).
torch: a TorchScript file of `torch_frame_net.FrameNet` (load with torch.jit.load, no bilayer_jax needed).
onnx: the same folded network as .onnx (`inference.onnx_export`: opset 17, standard ops only, the warp as a
  bordered gather, no GridSample; --quantize none or fp16) with the TFLite per-frame .json contract next to
  it; checked on ONNX Runtime. Bi-layer params only (the fsth and lpd families export tflite or torch).
original: args.txt + checkpoints/<epoch>_<net>.pth (spectral-norm form) for the base networks and the
  discriminator if present, and with --enh_out the enhancer run (texture_enhancer + discriminator), so the
  original's infer.py/train.py load them; no photo needed. Parameters imported from the original come back
  bit-exact with its args.txt; others get the paper script's arguments with their own architecture values.
Every export is checked against the JAX model on driver poses; the script prints max |error| and PSNR.
User errors print one line `error: ...` and exit 2.
"""

import os
import pathlib

from absl import flags
import numpy as np

from bilayer_jax import cli
from bilayer_jax import errors
from bilayer_jax import xla_cpu
from bilayer_jax.face import landmarks as landmarks_lib
from bilayer_jax.inference import preprocess  # light (no JAX): its defaults name the flags' defaults

FLAGS = flags.FLAGS
FORMATS = ('tflite', 'torch', 'onnx', 'original')
# What --quantize accepts per format (the others take none).
QUANTIZE_FORMATS = {'tflite': ('none', 'fp16', 'dynamic', 'int8'), 'onnx': ('none', 'fp16')}


class UsageError(errors.UserError, ValueError):
  """An unsupported combination of export options."""


def _define_flags():
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string('params', None, 'bilayer_jax params directory.')
  flags.DEFINE_string('source', None, 'Source photo (tflite, torch, onnx).')
  flags.DEFINE_enum('format', None, FORMATS, 'What to write.')
  flags.DEFINE_enum('quantize', 'none', ['none', 'fp16', 'dynamic', 'int8'],
                    'Quantisation: tflite none/fp16/dynamic/int8, onnx none/fp16.')
  flags.DEFINE_string('out', None, 'Output file (.tflite / .pt / .onnx) or directory (original).')
  flags.DEFINE_bool('with_init', False, 'tflite: also write the avatar-init and generic per-frame models.')
  flags.DEFINE_bool('enhance', None, 'Texture enhancer at init (default: if the params have one).')
  flags.DEFINE_string('driver', None, 'Video whose keypoints calibrate int8 and check parity '
                      '(default: the in-package clip).')
  flags.DEFINE_string('landmarks', 'auto', 'Landmark backend (auto, dlib, face_alignment).')
  flags.DEFINE_enum('detector', 'hog', list(landmarks_lib.DETECTORS), 'dlib face detector for the photo and '
                    'driver: hog, or cnn (also turned faces; seconds per photo on CPU; implies dlib landmarks).')
  flags.DEFINE_integer('face_index', None, 'Which face of the photo: 0 = the largest (default), 1 = the next...')
  flags.DEFINE_string('face_box', None, 'x0,y0,x1,y1 in photo pixels: the detected face overlapping it the most.')
  flags.DEFINE_float('max_faceless_fraction', preprocess.DEFAULT_MAX_FACELESS_FRACTION, 'Reject a --driver '
                     'when more than this fraction of its frames has no face (one with none always fails).')
  flags.DEFINE_string('epoch', '1', 'original: epoch in the checkpoint names.')
  flags.DEFINE_string('enh_out', None, 'original: also write the enhancer run (texture_enhancer) here.')
  flags.DEFINE_string('enh_epoch', '1', 'original: epoch in the enhancer checkpoint names.')
  flags.DEFINE_integer('batch', 1, 'tflite, onnx: frames per call.')


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR (dB) of two [-1, 1] images mapped to [0, 1] and clipped (`tflite_export.psnr`)."""
  from bilayer_jax.inference import tflite_export  # pylint: disable=g-import-not-at-top
  return tflite_export.psnr(a, b)


def driver_poses(anim, driver=None, max_frames: int = 120,
                 max_faceless_fraction: float = preprocess.DEFAULT_MAX_FACELESS_FRACTION) -> np.ndarray:
  """What the animator renders from, per driving-video frame with a face (default: the in-package clip):
  (K, 136) keypoints, or for the lpd family (K, S, S, 3) face crops in [-1, 1].

  Raises:
    preprocess.DriverFaceError: no frame, or more than `max_faceless_fraction` of them, has a face.
  """
  from bilayer_jax.inference import video  # pylint: disable=g-import-not-at-top
  from bilayer_jax.data import samples  # pylint: disable=g-import-not-at-top
  path = driver or samples.carphone_path()
  coverage = preprocess.FaceCoverage(driver or 'the demo clip', max_faceless_fraction,
                                     preprocess.open_driver(path, max_frames)[1], anim.preprocessor.landmarks.name)
  frames = video.read_video(path, max_frames)
  inputs = anim._driver_inputs(frames, coverage)  # pylint: disable=protected-access
  return np.stack([p for _, p, _ in inputs if p is not None])


def load_avatar(params: str, source: str, enhance=None, landmarks: str = 'auto', detector: str = 'hog',
                face_index=None, face_box=None):
  """(animator, preprocessed source, avatar) of the photo at `source` with the model in `params`."""
  from bilayer_jax import families  # pylint: disable=g-import-not-at-top
  from bilayer_jax.inference import video  # pylint: disable=g-import-not-at-top
  photo = video.read_image(source)
  anim = families.animator_from_params(params)
  anim.preprocessor = preprocess.FacePreprocessor(anim.cfg.image_size, landmarks, detector=detector,
                                                  crop_style=anim.preprocessor.crop_style)
  inputs = anim.preprocessor.source(photo, name=source, face_index=face_index, face_box=face_box)
  return anim, inputs, anim.init_avatar(inputs, enhance=enhance)


def check_poses(poses: np.ndarray, batch: int = 1, count: int = 16) -> np.ndarray:
  """Up to `count` poses (or crops), a whole number of batches (repeated if there are fewer)."""
  return np.resize(poses, (max(batch, min(count, len(poses)) // batch * batch),) + poses.shape[1:])


def write_torchscript(net, path: os.PathLike) -> pathlib.Path:
  """The folded per-frame network as a TorchScript file of `torch_frame_net.FrameNet` (atomic write)."""
  from bilayer_jax.inference import torch_frame_net  # pylint: disable=g-import-not-at-top
  from bilayer_jax.inference import torchscript_io  # pylint: disable=g-import-not-at-top
  return torchscript_io.save_scripted(torch_frame_net.FrameNet.from_folded(net), path)


def run_torchscript(path: os.PathLike):
  """A callable poses (N, 136) -> images (N, S, S, 3) of a file written by `write_torchscript`."""
  import torch  # pylint: disable=g-import-not-at-top
  module = torch.jit.load(str(path))

  def run(poses: np.ndarray) -> np.ndarray:
    with torch.no_grad():
      return module(torch.from_numpy(np.asarray(poses, np.float32)))[0].permute(0, 2, 3, 1).numpy()
  return run


def run_tflite(path: os.PathLike, batch: int = 1, *avatar_arrays: np.ndarray):
  """A callable poses (N, 136) -> images of a per-frame .tflite (N a multiple of its batch)."""
  from bilayer_jax.inference import tflite_export  # pylint: disable=g-import-not-at-top
  runner = tflite_export.LiteRunner(path)
  return lambda poses: np.concatenate(
      [runner(poses[i:i + batch], *avatar_arrays)[0] for i in range(0, len(poses), batch)])


def compare(images: np.ndarray, reference: np.ndarray) -> dict:
  return {'max_abs_error': float(np.abs(images - reference).max()), 'psnr_db': psnr(images, reference)}


def export_original(params_dir: str, out_dir: str, epoch: str, enh_out_dir: str = None, enh_epoch: str = '1'):
  """Writes the original's run layout for a params directory: the base run into `out_dir` (base networks, and
  the discriminator if present) and, with `enh_out_dir`, the enhancer run (see module docstring)."""
  from bilayer_jax import families  # pylint: disable=g-import-not-at-top
  from bilayer_jax import model_io  # pylint: disable=g-import-not-at-top
  cfg, variables, info = model_io.load_params(params_dir)
  converter = families.get(info['family']).converters['original']
  converter.export_run(out_dir, epoch, cfg, variables, info.get('metadata', {}), enh_out_dir, enh_epoch,
                       source=params_dir)


def _family_of(params: str) -> str:
  from bilayer_jax import model_io  # pylint: disable=g-import-not-at-top
  return model_io.load_config(params)[1]['family']


def export_fsth(params: str, fmt: str, out: str, source: str, quantize: str, with_init: bool, driver, landmarks: str,
                batch: int, *, detector: str, face_index, face_box, max_faceless_fraction: float) -> dict:
  """The FSTH person's per-frame generator as TFLite (`fsth_export`) or TorchScript (`fsth_torch`), checked
  against JAX on the driver's sketches."""
  if with_init:
    raise UsageError('--with_init: the fsth family\'s embedding runs once per person; it exports the per-frame '
                     'generator only')
  from bilayer_jax.inference import fsth_export  # pylint: disable=g-import-not-at-top
  anim, _, avatar = load_avatar(params, source, None, landmarks, detector, face_index, face_box)
  poses = driver_poses(anim, driver, max_faceless_fraction=max_faceless_fraction)
  sketches = anim.sketches(check_poses(poses, batch))
  reference = fsth_export.jax_reference(anim, avatar, sketches)
  if fmt == 'torch':
    from bilayer_jax.inference import fsth_torch  # pylint: disable=g-import-not-at-top
    path = fsth_torch.write_torchscript(anim, avatar, out)
    return {'files': [str(path)], 'checks': {'frame': compare(fsth_torch.run_torchscript(path)(sketches), reference)}}
  path = fsth_export.export_tflite(anim, avatar, out, quantize, batch, representative_sketches=anim.sketches(poses))
  return {'files': [str(path), str(path.with_suffix('.json'))],
          'checks': {'frame': compare(run_tflite(path, batch)(sketches), reference)}}


def export_lpd(params: str, fmt: str, out: str, source: str, quantize: str, with_init: bool, driver, landmarks: str,
               batch: int, *, detector: str, face_index, face_box, max_faceless_fraction: float) -> dict:
  """The LPD person's folded per-frame network as TFLite (`lpd_export`) or TorchScript (`lpd_torch`), checked
  against the animator's (unfolded) render on the driver's face crops."""
  if with_init:
    raise UsageError('--with_init: the lpd family\'s identity encoder runs once per person; it exports the '
                     'per-frame network only')
  from bilayer_jax.inference import lpd_export  # pylint: disable=g-import-not-at-top
  anim, _, avatar = load_avatar(params, source, None, landmarks, detector, face_index, face_box)
  crops = driver_poses(anim, driver, max_faceless_fraction=max_faceless_fraction)
  check = check_poses(crops, batch)
  reference = lpd_export.jax_reference(anim, avatar, check)['image']
  if fmt == 'torch':
    from bilayer_jax.inference import lpd_torch  # pylint: disable=g-import-not-at-top
    path = lpd_torch.write_torchscript(anim, avatar, out)
    images = lpd_torch.run_torchscript(path)(check)['image']
    return {'files': [str(path)], 'checks': {'frame': compare(images, reference)}}
  path = lpd_export.export_tflite(anim, avatar, out, quantize, batch, representative_crops=crops)
  return {'files': [str(path), str(path.with_suffix('.json'))],
          'checks': {'frame': compare(run_tflite(path, batch)(check), reference)}}


def export(params: str, fmt: str, out: str, source=None, quantize: str = 'none', with_init: bool = False,
           enhance=None, driver=None, landmarks: str = 'auto', epoch: str = '1', batch: int = 1, *,
           enh_out=None, enh_epoch: str = '1', detector: str = 'hog', face_index=None, face_box=None,
           max_faceless_fraction: float = preprocess.DEFAULT_MAX_FACELESS_FRACTION) -> dict:
  """Runs one export (see module docstring); returns {'files': [...], 'checks': {...}}."""
  if fmt not in FORMATS:
    raise UsageError(f'--format {fmt!r}: expected one of {FORMATS}')
  if quantize not in QUANTIZE_FORMATS.get(fmt, ('none',)):
    takes = [f for f, options in QUANTIZE_FORMATS.items() if quantize in options]
    raise UsageError(f'--quantize {quantize} applies to --format {" or ".join(takes)} only (got --format {fmt})')
  if with_init and fmt == 'onnx':
    raise UsageError('--with_init: the ONNX export writes the per-frame model only (the init model is TFLite)')
  if fmt == 'tflite' and with_init and quantize == 'int8':
    raise UsageError('--with_init with --quantize int8: the init model supports none/fp16/dynamic only')
  if fmt == 'original':
    if source:
      raise UsageError('--format original writes the parameters; it takes no --source')
    export_original(params, out, epoch, enh_out, enh_epoch)
    return {'files': [out] + ([enh_out] if enh_out else []), 'checks': {}}
  if not source:
    raise UsageError(f'--format {fmt} exports one avatar: --source photo is required')
  if driver:
    preprocess.open_driver(driver)  # a wrong path fails now, not after the avatar setup
  family = _family_of(params)
  if fmt == 'onnx' and family != 'bilayer':
    raise UsageError(f'--format onnx exports the bi-layer per-frame network; {family} params export tflite or torch')
  if family == 'fsth':
    return export_fsth(params, fmt, out, source, quantize, with_init, driver, landmarks, batch, detector=detector,
                       face_index=face_index, face_box=face_box, max_faceless_fraction=max_faceless_fraction)
  if family == 'lpd':
    return export_lpd(params, fmt, out, source, quantize, with_init, driver, landmarks, batch, detector=detector,
                      face_index=face_index, face_box=face_box, max_faceless_fraction=max_faceless_fraction)

  from bilayer_jax.inference import folding  # pylint: disable=g-import-not-at-top
  anim, inputs, avatar = load_avatar(params, source, enhance, landmarks, detector, face_index, face_box)
  net = anim.fold(avatar)
  poses = driver_poses(anim, driver, max_faceless_fraction=max_faceless_fraction)
  check = check_poses(poses, batch)
  reference = np.asarray(folding.frame_forward(net.spec, net.arrays, check)['image'])
  out_path = pathlib.Path(out)
  files, checks = [], {}

  if fmt == 'tflite':
    from bilayer_jax.inference import tflite_export  # pylint: disable=g-import-not-at-top
    path = tflite_export.export_frame_model(net, out_path, quantize, batch=batch, representative_poses=poses)
    files += [str(path), str(path.with_suffix('.json'))]
    checks['frame'] = compare(run_tflite(path, batch)(check), reference)
    if with_init:
      stem = out_path.with_suffix('')
      generic = tflite_export.export_frame_model(net, f'{stem}_generic.tflite', quantize, batch=batch, baked=False)
      init = tflite_export.export_init_model(anim.cfg, anim.variables, f'{stem}_init.tflite',
                                             enhance=avatar.enhanced, quantize=quantize)
      arrays = tflite_export.LiteRunner(init)(inputs.imgs[:, 0], inputs.segs[:, 0], inputs.stickmen[:, 0],
                                              inputs.poses[:, 0])
      files += [str(p) for p in (generic, generic.with_suffix('.json'), init, init.with_suffix('.json'))]
      checks['init+generic'] = compare(run_tflite(generic, batch, *arrays)(check), reference)
  elif fmt == 'onnx':
    from bilayer_jax.inference import onnx_export  # pylint: disable=g-import-not-at-top
    path = onnx_export.export_frame_model(net, out_path, quantize, batch=batch)
    files += [str(path), str(path.with_suffix('.json'))]
    checks['frame'] = compare(onnx_export.OrtRunner(path)(check)[0], reference)
  else:
    path = write_torchscript(net, out_path)
    files.append(str(path))
    checks['frame'] = compare(run_torchscript(path)(check), reference)
  return {'files': files, 'checks': checks}


def main(argv):
  del argv
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  result = export(FLAGS.params, FLAGS.format, FLAGS.out, FLAGS.source, FLAGS.quantize, FLAGS.with_init,
                  FLAGS.enhance, FLAGS.driver, FLAGS.landmarks, FLAGS.epoch, FLAGS.batch, enh_out=FLAGS.enh_out,
                  enh_epoch=FLAGS.enh_epoch, detector=FLAGS.detector,
                  face_index=FLAGS.face_index, face_box=FLAGS.face_box,
                  max_faceless_fraction=FLAGS.max_faceless_fraction)
  for f in result['files']:
    size = pathlib.Path(f).stat().st_size if pathlib.Path(f).is_file() else None
    print(f'wrote {f}' + (f' ({size / 1e6:.2f} MB)' if size else ''))
  for name, check in result['checks'].items():
    print(f'check {name} vs JAX on driver poses: max |error| {check["max_abs_error"]:.2e}, '
          f'PSNR {check["psnr_db"]:.1f} dB')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['params', 'format', 'out'])
  cli.run(main)
