"""Overlap averaging, window tables and ABAW files against direct loops."""
import numpy as np
import pytest

from affjax import evaluate
from affjax.data import records as records_lib
from affjax.data.views import base, predictions


@pytest.mark.parametrize('n,window,hop', [(20, 8, 4), (16, 8, 8), (17, 8, 8), (5, 8, 4), (8, 8, 4), (30, 8, 3)])
def test_window_starts_cover_every_frame_without_redundant_windows(n, window, hop):
  starts = base.window_starts(n, window, hop)
  covered = np.zeros(n, int)
  for s in starts:
    covered[s:s + window] += 1
  assert covered.min() >= 1
  assert starts[0] == 0 and np.all(np.diff(starts) == hop)
  # dropping the last window would leave frames uncovered
  assert np.any(covered - np.isin(np.arange(n), np.arange(starts[-1], starts[-1] + window)) == 0)


def test_overlap_average_equals_direct_loop():
  rng = np.random.default_rng(0)
  video = records_lib.VideoIndex(name='v', num_frames=19, fps=30.0, first_record=0, num_chunks=1, num_rows=19)
  acc = predictions.VideoPredictions.empty(video)
  labels = rng.uniform(-1, 1, (19, 2))
  windows = []
  for s in base.window_starts(19, 8, 3):
    pred = rng.normal(size=(8, 2))
    mask = np.arange(s, s + 8) < 19
    window_labels = np.zeros((8, 2))
    window_labels[mask] = labels[s:s + 8]
    acc.add(s, pred, window_labels, mask, mask)
    windows.append((s, pred))
  for frame in range(19):
    expected = np.mean([p[frame - s] for s, p in windows if s <= frame < s + 8], axis=0)
    np.testing.assert_allclose(acc.prediction[frame], expected, rtol=1e-12)
  np.testing.assert_allclose(acc.labels, labels)


def test_abaw_file_rows_clipping_and_repeat(tmp_path):
  pred = np.array([[0.5, -2.0], [1.5, 0.25], [-0.1, 0.2]])
  evaluate.write_abaw_file(tmp_path / 'v.txt', pred, num_rows=5)
  lines = (tmp_path / 'v.txt').read_text().splitlines()
  assert lines[0] == 'valence,arousal'
  rows = np.array([[float(x) for x in line.split(',')] for line in lines[1:]])
  np.testing.assert_allclose(rows, [[0.5, -1.0], [1.0, 0.25], [-0.1, 0.2], [-0.1, 0.2], [-0.1, 0.2]])
  evaluate.write_abaw_file(tmp_path / 'w.txt', pred, num_rows=2)
  assert len((tmp_path / 'w.txt').read_text().splitlines()) == 3


def test_trace_image_is_an_rgb_plot():
  video = records_lib.VideoIndex(name='v', num_frames=50, fps=30.0, first_record=0, num_chunks=2, num_rows=50)
  acc = predictions.VideoPredictions.empty(video)
  acc.add(0, np.zeros((50, 2)), np.ones((50, 2)) * 0.5, np.ones(50, bool), np.ones(50, bool))
  image = evaluate.trace_image(acc, width=200, height=100)
  assert image.shape == (100, 200, 3) and image.dtype == np.uint8
  assert (image != 255).any()
