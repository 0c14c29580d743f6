"""The cross-validation partitions of `config.data.fold` (LFAN's 6 folds, spec lfan 4): which official training
and validation videos a fold trains and validates on. The merge of the folds' predictions is the LFAN system's
(`affjax.systems.lfan.merge`)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
