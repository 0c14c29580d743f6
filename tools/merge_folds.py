"""Merges the folds' per-frame predictions into one ABAW submission by CCC centering (spec lfan 5).

  PYTHONPATH=. python tools/merge_folds.py --fold_dirs=runs/fold0,runs/fold1,... --split=test --out=runs/merged

Reads `<fold_dir>/predictions/<split>/<video>.txt` (`valence,arousal` rows) of every fold, merges each video and
emotion with `affjax.systems.lfan.merge.ccc_centering`, and writes `<out>/predictions/<split>/<video>.txt`
(`affjax.systems.lfan.merge.merge_folds`). `tools/train_folds.py` trains the six folds and merges them in one command.
"""
from __future__ import annotations

import pathlib

from absl import app, flags

from affjax.systems.lfan import merge

_FOLD_DIRS = flags.DEFINE_list('fold_dirs', None, 'Workdirs of the folds (each with predictions/<split>/).')
_SPLIT = flags.DEFINE_string('split', 'test', 'Which predictions to merge.')
_OUT = flags.DEFINE_string('out', None, 'Workdir the merged predictions are written under.')
flags.mark_flags_as_required(['fold_dirs', 'out'])


def main(argv):
  del argv
  videos = merge.merge_folds([pathlib.Path(d) for d in _FOLD_DIRS.value], _SPLIT.value, pathlib.Path(_OUT.value))
  print(f'{_OUT.value}/predictions/{_SPLIT.value}: {len(videos)} videos merged from {len(_FOLD_DIRS.value)} folds')


if __name__ == '__main__':
  app.run(main)
