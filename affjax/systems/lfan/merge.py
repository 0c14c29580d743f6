"""LFAN's merge of its cross-validation folds' predictions by CCC centering (spec lfan 5); the folds' partitions
are `affjax.data.folds`."""
from __future__ import annotations

import pathlib

import numpy as np
import tqdm

from affjax import evaluate
from affjax.data import names
from affjax.train.metrics import ccc


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


def merge_folds(fold_dirs: list[pathlib.Path], split: str, out: pathlib.Path) -> list[str]:
  """Merges `<fold_dir>/predictions/<split>/<video>.txt` of every fold by CCC centering (`ccc_centering`,
  per video and emotion) into `<out>/predictions/<split>/<video>.txt`; returns the video names."""
  per_fold = [{p.stem: p for p in (pathlib.Path(d) / 'predictions' / split).glob('*.txt')} for d in fold_dirs]
  for d, files in zip(fold_dirs, per_fold):
    if not files:
      raise FileNotFoundError(f'{d}/predictions/{split}/ holds no prediction file: evaluate that fold first')
  videos = sorted(set.intersection(*(set(f) for f in per_fold)))
  missing = sorted(set.union(*(set(f) for f in per_fold)) - set(videos))
  if missing:
    raise ValueError(f'videos not predicted by every fold, e.g. {missing[:5]}: rerun the folds that lack them')
  for video in tqdm.tqdm(videos, desc='merge', unit='video'):
    preds = np.stack([evaluate.read_abaw_file(files[video]) for files in per_fold])  # [F, N, 2]
    merged = np.stack([ccc_centering(preds[:, :, d]) for d in range(2)], axis=1)
    evaluate.write_abaw_file(names.inside(out, 'predictions', split, f'{video}.txt'), merged, len(merged))
  return videos
