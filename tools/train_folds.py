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

import pathlib

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'An LFAN config, e.g. configs/lfan.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the folds (fold0 ... fold5) and the merged predictions.')
_FOLDS = flags.DEFINE_list('folds', ['0', '1', '2', '3', '4', '5'], 'Folds to train (all six are merged).')
_TEST_LABELS = flags.DEFINE_string('test_labels', '', "Folder of <video>.txt test labels to score against, or "
                                   "'synthetic' (the synthetic tree's true curves).")
flags.mark_flags_as_required(['config', 'workdir'])

def main(argv):
  del argv
  from affjax.data import folds  # pylint: disable=g-import-not-at-top
  from affjax.systems.lfan import cross_validation, merge  # pylint: disable=g-import-not-at-top
  from affjax.train import loop  # pylint: disable=g-import-not-at-top
  config, workdir = _CONFIG.value, pathlib.Path(_WORKDIR.value).expanduser().absolute()
  loop.start_process(config)
  fold_dirs = [workdir / f'fold{k}' for k in range(folds.NUM_FOLDS)]
  for k in sorted({int(f) for f in _FOLDS.value}):
    if not 0 <= k < folds.NUM_FOLDS:
      raise app.UsageError(f'--folds: {k} is not a fold in 0..{folds.NUM_FOLDS - 1}')
    result = cross_validation.train_fold(config, fold_dirs[k], k)
    print(f'fold {k}: {result["results"]}')
  if not all((d / cross_validation.DONE_FILE).exists() for d in fold_dirs):
    print('not every fold has finished: rerun with the missing --folds to merge')
    return
  videos = merge.merge_folds(fold_dirs, 'test', workdir / 'merged')
  print(f'{workdir}/merged/predictions/test: {len(videos)} videos merged from {len(fold_dirs)} folds')
  if _TEST_LABELS.value:
    labels = pathlib.Path(_TEST_LABELS.value).expanduser()
    if _TEST_LABELS.value == 'synthetic':
      from affjax.data import prepare, synthetic  # pylint: disable=g-import-not-at-top
      if config.data.manual_dir:
        raise app.UsageError('--test_labels=synthetic needs the synthetic tree (no --config.data.manual_dir)')
      labels = workdir / 'synthetic_test_labels'
      synthetic.write_test_labels(prepare.source_tree(config), labels)
    table = cross_validation.score_table(workdir, fold_dirs, labels)
    (workdir / 'test_scores.md').write_text(table)
    print(table)


if __name__ == '__main__':
  app.run(main)
