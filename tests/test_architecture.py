"""Imports point one way: models -> convert/face/data -> train, inference, evaluators -> entry points.

Every module of the repository is parsed (imports inside functions count too) and placed in a layer; a
module may import its own layer or lower ones, and the three libraries of the middle layer may not import
each other in a circle. The package (`bilayer_jax`) does not depend on the dataset tool (`data_prep`),
except where a notebook builds the demo dataset.
"""

import ast
import itertools
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

# Longest prefix wins. 0: leaf helpers; 1: networks and their math; 2: what builds on the networks (weights
# I/O, face processing, data); 3: the libraries (training, inference, evaluation); 4: entry points and tools.
LAYERS = {
    'bilayer_jax': 0, 'bilayer_jax.errors': 0, 'bilayer_jax.xla_cpu': 0, 'bilayer_jax.cli': 0,
    'bilayer_jax.models': 1, 'bilayer_jax.losses': 1,
    'bilayer_jax.config': 2, 'bilayer_jax.model_io': 2, 'bilayer_jax.convert': 2, 'bilayer_jax.data': 2,
    'bilayer_jax.face': 2,
    'bilayer_jax.train': 3, 'bilayer_jax.inference': 3, 'bilayer_jax.evaluators': 3, 'bilayer_jax.families': 3,
    'bilayer_jax.evaluate': 4, 'bilayer_jax.drive': 4, 'bilayer_jax.export': 4,
    'bilayer_jax.import_original': 4, 'bilayer_jax.parity': 4, 'bilayer_jax.finetune': 4, 'bilayer_jax.strip': 4,
    'bilayer_jax.colab': 4, 'bilayer_jax.app': 4, 'data_prep': 4, 'configs': 4, 'run': 4, 'bench': 4,
}
LIBRARIES = ('bilayer_jax.train', 'bilayer_jax.inference', 'bilayer_jax.evaluators', 'bilayer_jax.families')
# Shared code that reaches a model only through the family registry (`bilayer_jax.families` and its `base`).
SHARED = ('bilayer_jax.train', 'bilayer_jax.evaluate', 'bilayer_jax.drive', 'bilayer_jax.export',
          'bilayer_jax.import_original', 'bilayer_jax.strip')
# Within bilayer_jax, only entry points use the dataset tool, to build the demo dataset on demand as run.py
# does (data_prep.demo.prepare): the evaluation command and the notebook workflows.
DATA_PREP_USERS_IN_THE_PACKAGE = {('bilayer_jax.colab.workflows', 'data_prep.demo'),
                                  ('bilayer_jax.evaluate', 'data_prep.demo')}
OWN_PACKAGES = ('bilayer_jax', 'data_prep', 'configs')


def _layer(module: str) -> int:
  parts = module.split('.')
  for n in range(len(parts), 0, -1):
    if '.'.join(parts[:n]) in LAYERS:
      return LAYERS['.'.join(parts[:n])]
  raise AssertionError(f'{module} has no layer in LAYERS')


def _modules():
  files = [REPO / 'run.py'] + sorted(
      f for package in OWN_PACKAGES + ('bench',) for f in (REPO / package).rglob('*.py'))
  for path in files:
    name = '.'.join(path.relative_to(REPO).with_suffix('').parts).removesuffix('.__init__')
    yield name, ast.parse(path.read_text(), str(path))


def _imports(tree):
  """Own-package modules a module imports ('from a.b import c' counts as a.b.c when that is a module or package)."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      folder = REPO / node.module.replace('.', '/')
      names = [f'{node.module}.{alias.name}' if (folder / f'{alias.name}.py').exists()
               or (folder / alias.name / '__init__.py').exists() else node.module for alias in node.names]
    else:
      continue
    yield from (n for n in names if n.split('.')[0] in OWN_PACKAGES)


def _edges():
  return {(module, imported) for module, tree in _modules() for imported in _imports(tree)}


def test_imports_point_down_the_layers():
  against = {(a, b) for a, b in _edges() if _layer(b) > _layer(a)}
  assert against == set(), 'imports against the direction'


def test_the_libraries_do_not_import_each_other_in_a_circle():
  package = lambda m: next((lib for lib in LIBRARIES if m == lib or m.startswith(lib + '.')), None)
  links = {(package(a), package(b)) for a, b in _edges()}
  links = {(a, b) for a, b in links if a and b and a != b}
  for a, b in itertools.permutations(LIBRARIES, 2):
    assert not {(a, b), (b, a)} <= links, f'{a} and {b} import each other'


def test_the_package_does_not_depend_on_the_dataset_tool():
  uses = {(a, b) for a, b in _edges() if a.startswith('bilayer_jax') and b.startswith('data_prep')}
  assert uses == DATA_PREP_USERS_IN_THE_PACKAGE


def test_the_shared_code_reaches_models_only_through_the_families():
  seam = ('bilayer_jax.families', 'bilayer_jax.families.base')
  model_code = ('bilayer_jax.models', 'bilayer_jax.families.', 'bilayer_jax.convert.original')
  direct = {(a, b) for a, b in _edges() if a.startswith(SHARED) and b not in seam and b.startswith(model_code)}
  assert direct == set()
