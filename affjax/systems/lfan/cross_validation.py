"""Training LFAN's cross-validation folds and scoring them against test labels (spec lfan 4, 5); the split and
the CCC-centering merge are `affjax.data.folds` and `affjax.systems.lfan.merge`, the command is tools/train_folds.py."""
from __future__ import annotations

import json
import pathlib

import numpy as np

from affjax import evaluate
from affjax.train import loop, metrics

DONE_FILE = 'fold.json'


def train_fold(config, workdir: pathlib.Path, fold: int) -> dict:
  """Trains and evaluates one fold (resuming it), unless it finished before; returns its results."""
  done = workdir / DONE_FILE
  if done.exists():
    return json.loads(done.read_text())
  config = config.copy_and_resolve_references()
  config.data.fold = fold
  config.eval.splits = tuple(dict.fromkeys((*config.eval.splits, 'validation', 'test')))
  results = loop.train_and_evaluate(config, workdir)
  done.write_text(json.dumps(dict(fold=fold, results=results), indent=1) + '\n')
  return json.loads(done.read_text())


def read_videos(directory: pathlib.Path, names: list[str]) -> dict[str, np.ndarray]:
  """name -> `[N, 2]` rows of `<directory>/<name>.txt` (ABAW files)."""
  return {name: evaluate.read_abaw_file(directory / f'{name}.txt') for name in names}


def score(preds: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
  """The ABAW metric of `preds` against `labels` (name -> `[N, 2]`) over every labelled frame, concatenated."""
  pairs = []
  for name, target in labels.items():
    if len(preds[name]) != len(target):
      raise ValueError(f'{name}: {len(preds[name])} predicted rows, {len(target)} label rows')
    valid = np.all(target != -5, axis=1)
    pairs.append((preds[name][valid], target[valid]))
  return metrics.va_metrics(np.concatenate([p for p, _ in pairs]), np.concatenate([t for _, t in pairs]))


def score_table(workdir: pathlib.Path, fold_dirs: list[pathlib.Path], labels_dir: pathlib.Path) -> str:
  """Markdown table of the test CCC of every fold, their mean, the plain per-frame mean of their predictions and
  the merged (CCC-centred) predictions, against the label files `<labels_dir>/<video>.txt`."""
  names = sorted(p.stem for p in labels_dir.glob('*.txt'))
  if not names:
    raise FileNotFoundError(f'no <video>.txt label files in {labels_dir}')
  labels = read_videos(labels_dir, names)
  per_fold = [read_videos(d / 'predictions' / 'test', names) for d in fold_dirs]
  rows = [(d.name, score(p, labels)) for d, p in zip(fold_dirs, per_fold)]
  mean = {k: float(np.mean([r[k] for _, r in rows])) for k in ('ccc_valence', 'ccc_arousal', 'ccc_mean')}
  plain = {name: np.mean([p[name] for p in per_fold], axis=0) for name in names}
  rows += [('mean of the folds\' CCC', mean), ('per-frame mean of the folds\' predictions', score(plain, labels)),
           ('merged (CCC centering)', score(read_videos(workdir / 'merged' / 'predictions' / 'test', names), labels))]
  lines = ['| predictions | CCC valence | CCC arousal | CCC mean |', '| --- | --- | --- | --- |']
  lines += [f"| {name} | {r['ccc_valence']:.4f} | {r['ccc_arousal']:.4f} | {r['ccc_mean']:.4f} |" for name, r in rows]
  return '\n'.join(lines) + '\n'
