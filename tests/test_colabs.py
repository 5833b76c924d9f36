"""colabs/*.ipynb: committed without outputs, each opening with what it does, its runtime and how long it takes,
linked from the README with an "Open in Colab" badge, and executed headless top to bottom (papermill) at CI sizes
(BILAYER_JAX_NOTEBOOK_SMOKE=1), failing on any cell error."""

import json
import re

import nbformat
import papermill
import pytest

from bilayer_jax.colab import install

import train_utils

COLABS = train_utils.REPO / 'colabs'
NOTEBOOKS = ('demo', 'train', 'export')
MAX_CODE_CELL_LINES = 25  # thin notebooks: the logic lives in bilayer_jax.colab (tested in test_colab_helpers)


def _badge(name: str) -> str:
  path = install.REPO_URL.removeprefix('https://github.com/')
  return f'https://colab.research.google.com/github/{path}/blob/main/colabs/{name}.ipynb'


def test_every_notebook_is_listed():
  assert sorted(p.stem for p in COLABS.glob('*.ipynb')) == sorted(NOTEBOOKS)


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_is_committed_thin_and_without_outputs(name):
  nb = nbformat.read(COLABS / f'{name}.ipynb', as_version=4)
  nbformat.validate(nb)
  intro = nb.cells[0]
  assert intro.cell_type == 'markdown'
  for heading in ('**What it does.**', '**Runtime.**', '**How long.**', _badge(name)):
    assert heading in intro.source, (name, heading)
  code = [c for c in nb.cells if c.cell_type == 'code']
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, f'{name}: outputs not stripped'
    assert len(cell.source.splitlines()) <= MAX_CODE_CELL_LINES, cell.source
  assert len([c for c in code if 'parameters' in c.metadata.get('tags', [])]) == 1
  assert install.REPO_URL in code[0].source and 'install.install()' in code[0].source
  assert nb.metadata.kernelspec.name == 'python3'


def test_readme_links_every_notebook():
  readme = (train_utils.REPO / 'README.md').read_text()
  for name in NOTEBOOKS:
    assert re.search(rf'\[!\[Open in Colab\]\([^)]+\)\]\({re.escape(_badge(name))}\)', readme), name


def execute(name, tmp_path, **parameters):
  out = tmp_path / f'{name}.out.ipynb'
  try:
    papermill.execute_notebook(str(COLABS / f'{name}.ipynb'), str(out), parameters=parameters,
                               cwd=str(train_utils.REPO), kernel_name='python3', progress_bar=False,
                               execution_timeout=900)
  except papermill.PapermillExecutionError as e:
    pytest.fail(f'{name}.ipynb failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n{"".join(e.traceback)[-3000:]}')
  nb = nbformat.read(out, as_version=4)
  return '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs
                   if o.output_type == 'stream')


@pytest.mark.slow
def test_notebooks_run_headless(tmp_path, monkeypatch, fixtures_dir, enh_run_dir, demo_data_dir):
  """demo (trains the demo model, imports the original-layout fixture run as 'official' weights), export
  (reuses that model), train (both stages, resume, evaluation), as CI sizes."""
  monkeypatch.setenv('BILAYER_JAX_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('BILAYER_JAX_DATA_DIR', demo_data_dir)
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
  # Compile fast, as the in-process tests do (conftest): at a few steps XLA's optimisations cost more than they save.
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  workdir = tmp_path / 'colab'

  text = execute('demo', tmp_path, WORKDIR=str(workdir), OFFICIAL_RUN_DIR=str(fixtures_dir), OFFICIAL_EPOCH='1',
                  OFFICIAL_ENH_RUN_DIR=str(enh_run_dir), OFFICIAL_ENH_EPOCH='1')
  assert 'smoke mode' in text and 'training the demo model' in text
  for name in ('demo.mp4', 'official.mp4', 'official_no_enhancer.mp4'):
    assert (workdir / name).stat().st_size > 0, name
  assert json.loads((workdir / 'official_params' / 'config.json').read_text())['metadata']['imported_from']

  text = execute('export', tmp_path, WORKDIR=str(workdir))
  assert 'using the demo model trained earlier' in text
  for name in ('avatar_fp32.tflite', 'avatar_fp32.json', 'avatar_int8.tflite', 'avatar.pt'):
    assert (workdir / 'export' / name).stat().st_size > 0, name
  assert 'TFLite: image (1, 64, 64, 3) mask (1, 64, 64, 1)' in text

  text = execute('train', tmp_path, WORKDIR=str(workdir / 'train'))
  assert 'base stage: initialised from scratch; trained steps 0 -> 4' in text
  assert 'base stage: resumed from this workdir at step 4; trained steps 4 -> 6' in text
  assert 'enhancer stage: initialised' in text
  assert (workdir / 'train' / 'enhancer' / 'params' / 'config.json').is_file()
  assert (workdir / 'train' / 'eval' / 'notebook' / 'results.json').is_file()


@pytest.mark.slow
def test_the_training_notebook_trains_the_fsth_family(tmp_path, monkeypatch, demo_data_dir):
  """FAMILY='fsth': meta-learning (resumed), then the evaluation feed-forward and fine-tuned, at CI sizes."""
  monkeypatch.setenv('BILAYER_JAX_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('BILAYER_JAX_DATA_DIR', demo_data_dir)
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  workdir = tmp_path / 'train'
  text = execute('train', tmp_path, WORKDIR=str(workdir), FAMILY='fsth')
  assert 'meta stage: initialised from scratch; trained steps 0 -> 4' in text
  assert 'meta stage: resumed from this workdir at step 4; trained steps 4 -> 6' in text
  assert 'enhancer stage' not in text
  finetuned = json.loads((workdir / 'eval' / 'notebook_finetuned' / 'results.json').read_text())
  assert finetuned['model']['finetune_steps'] == 2 and finetuned['protocol']['num_source_frames'] == 8
