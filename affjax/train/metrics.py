"""The ABAW metric: CCC with population moments over all valid frames of a partition, in float64."""
from __future__ import annotations

import numpy as np


def ccc(x: np.ndarray, y: np.ndarray) -> float:
  """2 cov(x, y) / (var x + var y + (mean x - mean y)^2), 1/N moments, no epsilon."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size == 0:
    raise ValueError('CCC of an empty set of frames: the partition has no annotated frame')
  mx, my = x.mean(), y.mean()
  cov = ((x - mx) * (y - my)).mean()
  return float(2 * cov / (x.var() + y.var() + (mx - my) ** 2))


def selection_score(metrics: dict[str, float], weights=(0.5, 0.5)) -> float:
  """The validation score that picks the best checkpoint: w_v CCC_valence + w_a CCC_arousal (config
  `eval.selection_weights`; (0.5, 0.5) is the ABAW mean)."""
  return float(weights[0] * metrics['ccc_valence'] + weights[1] * metrics['ccc_arousal'])


def va_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
  """pred/target [N,2] (valence, arousal) over a partition's concatenated annotated frames."""
  v, a = ccc(pred[:, 0], target[:, 0]), ccc(pred[:, 1], target[:, 1])
  return dict(ccc_valence=v, ccc_arousal=a, ccc_mean=(v + a) / 2, num_frames=int(len(pred)))
