"""Merges the folds' per-frame predictions into one ABAW submission by CCC centering (spec lfan 5).

  PYTHONPATH=. python tools/merge_folds.py --fold_dirs=runs/fold0,runs/fold1,... --split=test --out=runs/merged

Reads `<fold_dir>/predictions/<split>/<video>.txt` (`valence,arousal` rows) of every fold, merges each video and
emotion with `affjax.folds.ccc_centering`, and writes `<out>/predictions/<split>/<video>.txt`.
"""
from __future__ import annotations

import pathlib

import numpy as np
import tqdm
from absl import app, flags

from affjax import evaluate, folds

_FOLD_DIRS = flags.DEFINE_list('fold_dirs', None, 'Workdirs of the folds (each with predictions/<split>/).')
_SPLIT = flags.DEFINE_string('split', 'test', 'Which predictions to merge.')
_OUT = flags.DEFINE_string('out', None, 'Workdir the merged predictions are written under.')
flags.mark_flags_as_required(['fold_dirs', 'out'])


def read_predictions(path: pathlib.Path) -> np.ndarray:
  """`[N, 2]` (valence, arousal) rows of an ABAW prediction file."""
  lines = path.read_text().splitlines()
  if not lines or lines[0].strip() != 'valence,arousal':
    raise ValueError(f'{path}: expected the header "valence,arousal", got {lines[:1]}')
  return np.array([[float(v) for v in line.split(',')] for line in lines[1:]], np.float64).reshape(-1, 2)


def merge(fold_dirs: list[pathlib.Path], split: str, out: pathlib.Path) -> list[str]:
  """Writes the merged file of every video all folds predicted; returns the video names."""
  per_fold = [{p.stem: p for p in (d / 'predictions' / split).glob('*.txt')} for d in fold_dirs]
  for d, files in zip(fold_dirs, per_fold):
    if not files:
      raise FileNotFoundError(f'{d}/predictions/{split}/ holds no prediction file: evaluate that fold first')
  videos = sorted(set.intersection(*(set(f) for f in per_fold)))
  missing = sorted(set.union(*(set(f) for f in per_fold)) - set(videos))
  if missing:
    raise ValueError(f'videos not predicted by every fold, e.g. {missing[:5]}: rerun the folds that lack them')
  for video in tqdm.tqdm(videos, desc='merge', unit='video'):
    preds = np.stack([read_predictions(files[video]) for files in per_fold])  # [F, N, 2]
    merged = np.stack([folds.ccc_centering(preds[:, :, d]) for d in range(2)], axis=1)
    evaluate.write_abaw_file(out / 'predictions' / split / f'{video}.txt', merged, len(merged))
  return videos


def main(argv):
  del argv
  videos = merge([pathlib.Path(d) for d in _FOLD_DIRS.value], _SPLIT.value, pathlib.Path(_OUT.value))
  print(f'{_OUT.value}/predictions/{_SPLIT.value}: {len(videos)} videos merged from {len(_FOLD_DIRS.value)} folds')


if __name__ == '__main__':
  app.run(main)
