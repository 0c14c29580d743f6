"""Trains LFAN's six cross-validation folds in turn, each predicting the test split, then merges their test
predictions by CCC centering (spec lfan 4, 5).

  PYTHONPATH=. python tools/train_folds.py --config=configs/lfan.py --workdir=DIR [--folds=0,1,2,3,4,5]
      [--test_labels=LABELS]

Fold k trains in DIR/fold<k> (`--config.data.fold=k`, training-partition statistics of that fold) and writes
DIR/fold<k>/predictions/{validation,test}/; a finished fold leaves DIR/fold<k>/fold.json and is skipped by a rerun,
an interrupted one resumes at its last epoch. The merged submission is DIR/merged/predictions/test/. With
`--test_labels` (a folder of `<video>.txt` label files of the test videos in the ABAW format, or `synthetic`: the
curves the config's synthetic tree was drawn from, written to DIR/synthetic_test_labels/, outside the release
layout), every fold's and the merged test predictions are scored and the table is written to DIR/test_scores.md.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'An LFAN config, e.g. configs/lfan.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the folds (fold0 ... fold5) and the merged predictions.')
_FOLDS = flags.DEFINE_list('folds', ['0', '1', '2', '3', '4', '5'], 'Folds to train (all six are merged).')
_TEST_LABELS = flags.DEFINE_string('test_labels', '', "Folder of <video>.txt test labels to score against, or "
                                   "'synthetic' (the synthetic tree's true curves).")
flags.mark_flags_as_required(['config', 'workdir'])

DONE_FILE = 'fold.json'


def train_fold(config, workdir: pathlib.Path, fold: int) -> dict:
  """Trains and evaluates one fold (resuming it), unless it finished before; returns its results."""
  from affjax.train import loop  # pylint: disable=g-import-not-at-top  (grain workers re-import this module)
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
  from affjax import evaluate  # pylint: disable=g-import-not-at-top
  return {name: evaluate.read_abaw_file(directory / f'{name}.txt') for name in names}


def score(preds: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
  """The ABAW metric of `preds` against `labels` (name -> `[N, 2]`) over every labelled frame, concatenated."""
  from affjax.train import metrics  # pylint: disable=g-import-not-at-top
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


def main(argv):
  del argv
  from affjax import evaluate, folds  # pylint: disable=g-import-not-at-top
  from affjax.train import loop  # pylint: disable=g-import-not-at-top
  config, workdir = _CONFIG.value, pathlib.Path(_WORKDIR.value).expanduser().absolute()
  loop.start_process(config)
  fold_dirs = [workdir / f'fold{k}' for k in range(folds.NUM_FOLDS)]
  for k in sorted({int(f) for f in _FOLDS.value}):
    if not 0 <= k < folds.NUM_FOLDS:
      raise app.UsageError(f'--folds: {k} is not a fold in 0..{folds.NUM_FOLDS - 1}')
    result = train_fold(config, fold_dirs[k], k)
    print(f'fold {k}: {result["results"]}')
  if not all((d / DONE_FILE).exists() for d in fold_dirs):
    print('not every fold has finished: rerun with the missing --folds to merge')
    return
  videos = evaluate.merge_folds(fold_dirs, 'test', workdir / 'merged')
  print(f'{workdir}/merged/predictions/test: {len(videos)} videos merged from {len(fold_dirs)} folds')
  if _TEST_LABELS.value:
    labels = pathlib.Path(_TEST_LABELS.value).expanduser()
    if _TEST_LABELS.value == 'synthetic':
      from affjax.data import prepare, synthetic  # pylint: disable=g-import-not-at-top
      if config.data.manual_dir:
        raise app.UsageError('--test_labels=synthetic needs the synthetic tree (no --config.data.manual_dir)')
      labels = workdir / 'synthetic_test_labels'
      synthetic.write_test_labels(prepare.source_tree(config), labels)
    table = score_table(workdir, fold_dirs, labels)
    (workdir / 'test_scores.md').write_text(table)
    print(table)


if __name__ == '__main__':
  app.run(main)
