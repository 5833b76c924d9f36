"""Comparison helpers implementing the tolerance rules of the fixtures' README §5."""

import json
import pathlib
from typing import Dict, Mapping, Optional

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'original_small'


def tolerances(file_name: str) -> Dict[str, float]:
  """max |float32 - float64| of the ORIGINAL per array (tolerances.json)."""
  return json.loads((FIXTURES / 'tolerances.json').read_text())[file_name]


def limit(ref: np.ndarray, tol: float, gradient: bool = False, relative: Optional[float] = None) -> float:
  """Outputs/losses/buffers: 10 tol + 1e-4 max|ref| + 1e-7; gradients: 10 tol + 1e-3 max|ref| + 1e-7.

  `relative` replaces the max|ref| factor (the README's float32 rule of thumb for gradients is 2e-2).
  """
  if relative is None:
    relative = 1e-3 if gradient else 1e-4
  return 10 * tol + relative * float(np.abs(ref).max(initial=0.0)) + 1e-7


def compare(actual: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], tols: Mapping[str, float],
            keys, gradient: bool = False, relative: Optional[float] = None) -> float:
  """Asserts every key within its limit; returns the worst diff/limit ratio."""
  failures, worst = [], 0.0
  for key in keys:
    assert key in actual, f'missing output {key}'
    a, r = np.asarray(actual[key], np.float64), np.asarray(reference[key], np.float64)
    assert a.shape == r.shape, f'{key}: shape {a.shape} != reference {r.shape}'
    ratio = float(np.abs(a - r).max(initial=0.0)) / limit(r, tols.get(key, 0.0), gradient, relative)
    worst = max(worst, ratio)
    if ratio > 1:
      failures.append(f'{key}: max diff / limit = {ratio:.3g}')
  assert not failures, 'outside the derived tolerance:\n' + '\n'.join(failures)
  return worst
