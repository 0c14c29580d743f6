"""LFAN's 6-fold cross-validation split and the CCC-centering merge of the folds' predictions (spec lfan 4, 5)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from affjax.train.metrics import ccc

NUM_FOLDS = 6
NUM_TRAIN_CHUNKS = NUM_FOLDS - 1


def fold_split(train_videos: Sequence[str], validation_videos: Sequence[str], fold: int) -> tuple[list[str], list[str]]:
  """(training videos, validation videos) of `fold` in [0, 6).

  The training videos, sorted by annotation file name including '.txt' (byte order, so '106-30-720x1280' sorts
  before '106'), are cut into 5 chunks of n // 5 (the last takes the remainder; [0:70] ... [280:351] for 351);
  chunk 5 is the official validation set. Fold f orders the chunks as `np.roll(arange(6), f)` and validates on the
  last: fold 0 on the official set, fold k >= 1 on training chunk 5 - k.
  """
  if not 0 <= fold < NUM_FOLDS:
    raise ValueError(f'fold={fold}: must be in [0, {NUM_FOLDS})')
  ordered = sorted(train_videos, key=lambda name: (name + '.txt').encode())
  size = len(ordered) // NUM_TRAIN_CHUNKS
  if size == 0:
    raise ValueError(f'{len(ordered)} training videos cannot make {NUM_TRAIN_CHUNKS} cross-validation chunks')
  bounds = [i * size for i in range(NUM_TRAIN_CHUNKS)] + [len(ordered)]
  chunks = [ordered[a:b] for a, b in zip(bounds[:-1], bounds[1:])] + [list(validation_videos)]
  order = np.roll(np.arange(NUM_FOLDS), fold)
  train = [v for c in order[:-1] for v in chunks[c]]
  return train, list(chunks[order[-1]])


def ccc_centering(predictions: np.ndarray) -> np.ndarray:
  """Merges `[F, N]` per-frame predictions of F folds for one video and emotion into `[N]` in [-1, 1].

  a_i = mean over j != i of CCC(x_i, x_j) (agreement of fold i with the others), w = sum a_i mu_i / sum a_i (an
  agreement-weighted mean level), result(t) = mean_i x_i(t) - mean_i mu_i + w, clipped to [-1, 1].
  """
  x = np.asarray(predictions, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f'ccc_centering needs [folds >= 2, frames] predictions, got shape {x.shape}')
  f = x.shape[0]
  agreement = np.array([np.mean([ccc(x[i], x[j]) for j in range(f) if j != i]) for i in range(f)])
  means = x.mean(axis=1)
  level = np.sum(agreement * means) / np.sum(agreement)
  return np.clip(x.mean(axis=0) - means.mean() + level, -1.0, 1.0)
