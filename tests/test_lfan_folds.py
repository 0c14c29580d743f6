"""LFAN cross-validation: the 6-fold split and CCC centering (hand-computed example, files through the tools)."""

import numpy as np
import pytest

from affjax import evaluate
from affjax.data import folds
from affjax.systems.lfan import merge


def test_fold_split_chunks_rolls_and_sorts_with_txt():
  train = [f'v{i:03d}' for i in range(11)] + ['106', '106-30-720x1280']
  validation = ['val0', 'val1']
  # sorted with '.txt': '106-30-720x1280.txt' < '106.txt' ('-' < '.'), both before 'v...'
  ordered = ['106-30-720x1280', '106'] + [f'v{i:03d}' for i in range(11)]
  chunks = [ordered[0:2], ordered[2:4], ordered[4:6], ordered[6:8], ordered[8:13], validation]
  for fold in range(6):
    tr, va = folds.fold_split(train, validation, fold)
    held_out = (5 - fold) % 6  # fold 0: the official set; fold k: training chunk 5 - k
    assert va == chunks[held_out]
    assert sorted(tr) == sorted(v for c in range(6) if c != held_out for v in chunks[c])
  with pytest.raises(ValueError, match='fold=6'):
    folds.fold_split(train, validation, 6)


def test_ccc_centering_hand_computed():
  """x1 = [1.3, -0.7] (mu 0.3), x2 = [1, -1] (mu 0), x3 = [0.2, -0.8] (mu -0.3); all variances about the own
  mean: 1, 1, 0.25; covariances 1 (x1,x2), 0.5 (x1,x3), 0.5 (x2,x3).
  CCC12 = 2/(2 + 0.09) = 0.956938, CCC13 = 1/(1.25 + 0.36) = 0.621118, CCC23 = 1/(1.25 + 0.09) = 0.746269;
  a = (0.789028, 0.851604, 0.683694); w = 0.3 (a1 - a3) / sum a = 0.013595;
  result = mean x - mean mu + w = [0.833333, -0.833333] + 0.013595."""
  x = np.array([[1.3, -0.7], [1.0, -1.0], [0.2, -0.8]])
  np.testing.assert_allclose(merge.ccc_centering(x), [0.846928, -0.819738], atol=2e-6)
  assert merge.ccc_centering(np.full((3, 4), 2.0) + np.arange(4) * 1e-3).max() == 1.0  # clipped


def test_merge_folds_files(tmp_path):
  rng = np.random.default_rng(0)
  preds = rng.uniform(-0.5, 0.5, (3, 20, 2))
  dirs = []
  for f in range(3):
    dirs.append(tmp_path / f'fold{f}')
    evaluate.write_abaw_file(dirs[-1] / 'predictions' / 'test' / 'vid.txt', preds[f], 20)
  assert merge.merge_folds(dirs, 'test', tmp_path / 'merged') == ['vid']
  merged = evaluate.read_abaw_file(tmp_path / 'merged' / 'predictions' / 'test' / 'vid.txt')
  ref = np.stack([merge.ccc_centering(np.round(preds[:, :, d], 6)) for d in range(2)], axis=1)
  np.testing.assert_allclose(merged, ref, atol=2e-6)


def test_train_folds_scores_each_fold_and_the_merge_against_label_files(tmp_path):
  """The table's rows are the ABAW metric of each fold's files and of the merged files against the labels (-5 rows
  skipped), computed directly here."""
  from affjax.systems.lfan import cross_validation  # pylint: disable=g-import-not-at-top
  from affjax.train import metrics  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  labels = {'a': rng.uniform(-1, 1, (30, 2)), 'b': rng.uniform(-1, 1, (25, 2))}
  labels['a'][3:6] = -5
  for name, rows in labels.items():
    (tmp_path / 'labels').mkdir(exist_ok=True)
    (tmp_path / 'labels' / f'{name}.txt').write_text('valence,arousal\n' + ''.join(f'{v},{a}\n' for v, a in rows))
  dirs = [tmp_path / f'fold{f}' for f in range(6)]
  preds = {name: 0.5 * rows + rng.normal(0, 0.3, (6,) + rows.shape) for name, rows in labels.items()}
  for f, d in enumerate(dirs):
    for name in labels:
      evaluate.write_abaw_file(d / 'predictions' / 'test' / f'{name}.txt', preds[name][f], len(labels[name]))
  merge.merge_folds(dirs, 'test', tmp_path / 'merged')
  table = cross_validation.score_table(tmp_path, dirs, tmp_path / 'labels').splitlines()
  assert len(table) == 2 + 6 + 3
  valid = {name: np.all(rows != -5, axis=1) for name, rows in labels.items()}
  target = np.concatenate([labels[n][valid[n]] for n in labels])

  def direct(files):
    return metrics.va_metrics(np.concatenate([np.clip(np.round(files[n], 6), -1, 1)[valid[n]] for n in labels]), target)

  folds_ccc = [direct({n: preds[n][f] for n in labels}) for f in range(6)]
  for f in range(6):
    cells = table[2 + f].split('|')
    assert cells[1].strip() == f'fold{f}'
    assert float(cells[4]) == pytest.approx(folds_ccc[f]['ccc_mean'], abs=1e-4)
  assert float(table[8].split('|')[4]) == pytest.approx(np.mean([r['ccc_mean'] for r in folds_ccc]), abs=1e-4)
  plain = {n: np.mean([np.clip(np.round(preds[n][f], 6), -1, 1) for f in range(6)], axis=0) for n in labels}
  assert float(table[9].split('|')[4]) == pytest.approx(direct(plain)['ccc_mean'], abs=1e-4)
  merged = {n: evaluate.read_abaw_file(tmp_path / 'merged' / 'predictions' / 'test' / f'{n}.txt') for n in labels}
  assert float(table[10].split('|')[4]) == pytest.approx(direct(merged)['ccc_mean'], abs=1e-4)
