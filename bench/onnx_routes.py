r"""ONNX export routes for the folded per-frame network, compared on graph size and ONNX Runtime speed.

    python bench/onnx_routes.py [--runs 30] [--threads N] [--params DIR] [--out_dir DIR]

Routes (the same avatar: random paper-config weights with calibrated BN statistics as in bench/inference.py,
or --params; the astronaut photo; poses of the in-package talking-face clip):
  torch, dynamo exporter        onnx_export.to_onnx: GatherFrameNet through torch.onnx.export(dynamo=True)
                                (what `python -m bilayer_jax.export --format onnx` writes; needs onnxscript)
  torch, TorchScript exporter   the same module through the deprecated torch.onnx.export(dynamo=False)
  jax2onnx                      folding.frame_forward (what the TFLite converter sees) through jax2onnx, when
                                importable (it is not pinned: its requirements downgrade pinned packages, so
                                install it apart, e.g. `pip install --no-deps --target DIR jax2onnx` and put
                                DIR on PYTHONPATH with its imports satisfied)
All at opset onnx_export.OPSET, float32, batch 1. Per route: export seconds, nodes (and without Constant
nodes), op types, file size, nodes after ONNX Runtime's own graph optimisation (what it runs), the median
per-frame latency on ONNX Runtime's CPU execution provider (intra-op threads = N; routes run alternately so
they see the same machine load) and max |image error| against JAX's folded network on the clip's poses.
"""

import argparse
import io
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from bilayer_jax import export as export_cli
from bilayer_jax import model_io
from bilayer_jax import xla_cpu
from bilayer_jax.inference import animator as animator_lib
from bilayer_jax.inference import folding
from bilayer_jax.inference import onnx_export
from bilayer_jax.inference import preprocess
from bilayer_jax.models.config import BilayerConfig
import inference as inference_bench  # bench/inference.py (this script's folder is on sys.path)


def _dynamo_route(net):
  return onnx_export.to_onnx(net)


def _torchscript_route(net):
  import onnx  # pylint: disable=g-import-not-at-top
  module = onnx_export.GatherFrameNet(net.spec, net.arrays).eval().requires_grad_(False)
  buffer = io.BytesIO()
  torch.onnx.export(module, (torch.zeros(1, 136),), buffer, dynamo=False, opset_version=onnx_export.OPSET,
                    input_names=['poses'], output_names=['image', 'mask'])
  return onnx.load_model_from_string(buffer.getvalue())


def _jax2onnx_route(net):
  import jax2onnx  # pylint: disable=g-import-not-at-top
  arrays = {k: jnp.asarray(v) for k, v in net.arrays.items()}

  def forward(poses):
    out = folding.frame_forward(net.spec, arrays, poses)
    return out['image'], out['mask']
  return jax2onnx.to_onnx(forward, [(1, 136)], opset=onnx_export.OPSET)


ROUTES = {'torch, dynamo exporter': _dynamo_route, 'torch, TorchScript exporter': _torchscript_route,
          'jax2onnx': _jax2onnx_route}


def _avatar(params):
  """(folded net, driving poses) of the astronaut with the params' weights (default: random paper config)."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  if params:
    cfg, variables, _ = model_io.load_params(params)
    variables = variables['generator']
  else:
    cfg = BilayerConfig()
    variables, _ = inference_bench.calibrated_variables(cfg)
  anim = animator_lib.Animator(cfg, variables,
                               preprocessor=preprocess.FacePreprocessor(cfg.image_size, landmarks='dlib'), chunk=1)
  net = anim.fold(anim.init_avatar(skimage.data.astronaut(), enhance=False))
  return net, export_cli.driver_poses(anim, max_frames=30)


def _optimised_nodes(path, threads):
  """Node count of the graph ONNX Runtime runs after its own optimisations (ORT_ENABLE_ALL)."""
  import onnx  # pylint: disable=g-import-not-at-top
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.optimized_model_filepath = f'{path}.ort_optimised.onnx'
  ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
  return len(onnx.load(options.optimized_model_filepath).graph.node)


def main():
  xla_cpu.configure()  # before JAX starts: bilayer_jax/xla_cpu.py
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--runs', type=int, default=30)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--params', default=None, help='bilayer_jax params directory (default: random paper config)')
  parser.add_argument('--out_dir', default=None)
  args = parser.parse_args()
  out_dir = args.out_dir or tempfile.mkdtemp(prefix='bilayer_onnx_routes_')
  os.makedirs(out_dir, exist_ok=True)
  net, poses = _avatar(args.params)
  reference = np.asarray(folding.frame_forward(net.spec, net.arrays, poses)['image'])
  print(f'{args.params or "random paper-config weights"}: {net.spec.image_size}^2, batch 1, {args.threads} '
        f'threads, opset {onnx_export.OPSET}, jax {jax.__version__}, torch {torch.__version__}')
  rows, fns = {}, {}
  for name, route in ROUTES.items():
    try:
      start = time.perf_counter()
      model = route(net)
      export_s = time.perf_counter() - start
    except ImportError as e:
      print(f'{name}: skipped ({e})')
      continue
    path = os.path.join(out_dir, name.replace(', ', '_').replace(' ', '_') + '.onnx')
    with open(path, 'wb') as f:
      f.write(model.SerializeToString())
    runner = onnx_export.OrtRunner(path, args.threads)
    counts = onnx_export.op_counts(model)
    rows[name] = {'export_s': export_s, 'nodes': sum(counts.values()),
                  'compute_nodes': sum(counts.values()) - counts.get('Constant', 0), 'op_types': len(counts),
                  'ort_nodes': _optimised_nodes(path, args.threads), 'mb': os.path.getsize(path) / 1e6,
                  'error': float(np.abs(runner(poses)[0] - reference).max()), 'ops': counts}
    fns[name] = lambda runner=runner: runner(poses[:1])
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(args.runs):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  print(f'\n{"route":30s} {"export s":>8s} {"nodes":>6s} {"non-Const":>9s} {"types":>5s} {"ORT runs":>8s} '
        f'{"MB":>6s} {"ORT ms":>7s} {"max|err|":>9s}')
  for name, row in rows.items():
    print(f'{name:30s} {row["export_s"]:8.1f} {row["nodes"]:6d} {row["compute_nodes"]:9d} {row["op_types"]:5d} '
          f'{row["ort_nodes"]:8d} {row["mb"]:6.2f} {statistics.median(times[name]) * 1e3:7.1f} {row["error"]:9.1e}')
  for name, row in rows.items():
    print(f'{name}: {row["ops"]}')


if __name__ == '__main__':
  main()
