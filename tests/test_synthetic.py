"""The synthetic Aff-Wild2 tree: read back by the layout reader, quirks present, labels encoded."""

import io
import json
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
from PIL import Image

from affjax.data import affwild2, synthetic

ROOT = pathlib.Path(__file__).parents[1]

TINY = dict(num_train=3, num_validation=2, num_test=1, min_frames=48, max_frames=64)
SMALLEST = dict(num_train=3, num_validation=2, num_test=0, min_frames=30, max_frames=32)
TOOL = pathlib.Path(__file__).parents[1] / 'tools/make_synthetic_affwild2.py'


@pytest.fixture(scope='module')
def root(tmp_path_factory) -> pathlib.Path:
  return synthetic.ensure(tmp_path_factory.mktemp('synthetic') / 'tree', **TINY)


@pytest.fixture(scope='module')
def videos(root) -> dict[str, affwild2.Video]:
  return {e.name: affwild2.load_video(e) for e in affwild2.list_videos(root)}


def runs(mask: np.ndarray) -> list[int]:
  """Lengths of the runs of True in a 1-D bool array."""
  edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
  return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


def test_reader_reads_every_quirk(root, videos):
  entries = [v.entry for v in videos.values()]
  assert [e.split for e in entries] == ['train'] * 3 + ['validation'] * 2 + ['test']
  annotated = [v for v in videos.values() if v.entry.split != 'test']
  for v in videos.values():
    assert len(v.audio) == affwild2.frame_boundary_sample(v.num_frames, v.fps)
    assert TINY['min_frames'] <= v.num_frames <= TINY['max_frames']
    assert max(runs(~v.face_mask)) >= 3, v.entry.name
  for v in annotated:   # a run of -5 rows (the short file's tail is masked too, but as missing)
    assert v.report['unannotated'] >= 3 and max(runs(~v.label_mask)) >= 3, v.entry.name
  assert sorted(v.report['extra_rows'] for v in annotated)[:-1] == [0] * 4
  assert 1 <= max(v.report['extra_rows'] for v in annotated) <= 3
  short = [v for v in annotated if v.report['missing_rows']]
  assert len(short) == 1 and short[0].entry.split == 'validation'
  assert not short[0].label_mask[-short[0].report['missing_rows']:].any()
  test = videos[entries[-1].name]
  assert not test.label_mask.any() and test.report['annotated'] == 0

  left, right = (videos[n] for n in ('101-30-192x96_left', '101-30-192x96_right'))
  assert left.entry.media_path == right.entry.media_path
  np.testing.assert_array_equal(left.audio, right.audio)
  both = left.label_mask & right.label_mask
  np.testing.assert_array_equal(left.labels[both, 1], right.labels[both, 1])
  assert np.abs(left.labels[both, 0] - right.labels[both, 0]).mean() > 0.1

  assert {v.fps for v in videos.values()} == {25.0, 30.0, 30000 / 1001}
  media = {e.media_path for e in entries}
  assert {p.parent.name for p in media} == {'videos', 'batch1'}
  assert sorted(p.suffix for p in media) == ['.avi'] + ['.mp4'] * 4
  sidecars = [e for e in entries if e.wav_path is not None]
  assert len(sidecars) == 1 and sidecars[0].wav_path == sidecars[0].media_path.with_suffix('.wav')
  formats = set()
  for e in {e.wav_path or e.media_path: e for e in entries}:
    with av.open(str(e)) as container:
      formats.add((container.streams.audio[0].rate, container.streams.audio[0].channels))
  assert formats == {(44100, 2), (48000, 1)}
  with av.open(str(sidecars[0].media_path)) as container:
    assert not container.streams.audio


def test_crops_are_rgb_faces(root, videos):
  v = videos['100-25-96x96']
  k = int(np.argmax(v.face_mask))
  image = Image.open(io.BytesIO(affwild2.read_jpeg(v.entry, k)))
  assert image.format == 'JPEG' and image.mode == 'RGB' and image.size == (112, 112)
  assert {p.name for p in root.iterdir()} == {
      'annotations', 'cropped_aligned', 'videos', 'batch1', 'va_test_set.txt', '.complete'}


def f0_per_frame(video: affwild2.Video, frames: np.ndarray) -> np.ndarray:
  """Autocorrelation pitch (80-320 Hz) of a 64 ms window centred on each frame."""
  sr, width = affwild2.SAMPLE_RATE, 1024
  padded = np.pad(video.audio, width // 2)
  lo, hi = sr // 320, sr // 80
  f0 = []
  for k in frames:
    centre = (affwild2.frame_boundary_sample(k, video.fps)
              + affwild2.frame_boundary_sample(k + 1, video.fps)) // 2
    w = padded[centre:centre + width]
    w = w - w.mean()
    ac = np.correlate(w, w, 'full')[width - 1:]
    f0.append(sr / (lo + np.argmax(ac[lo:hi])))
  return np.array(f0)


def test_labels_are_seen_and_heard(videos):
  for v in videos.values():
    if v.entry.split == 'test':
      continue
    frames = np.flatnonzero(v.label_mask & v.face_mask)
    warmth = []
    for k in frames:
      face = np.asarray(Image.open(io.BytesIO(affwild2.read_jpeg(v.entry, k))), np.float32)
      centre = face[28:84, 28:84]
      warmth.append((centre[..., 0] - centre[..., 2]).mean())
    assert np.corrcoef(warmth, v.labels[frames, 0])[0, 1] > 0.8, v.entry.name
    frames = np.flatnonzero(v.label_mask)
    assert np.corrcoef(f0_per_frame(v, frames), v.labels[frames, 1])[0, 1] > 0.6, v.entry.name


def test_deterministic_for_a_seed(tmp_path):
  a = synthetic.generate(tmp_path / 'a', **SMALLEST)
  b = synthetic.generate(tmp_path / 'b', **SMALLEST)
  files = sorted(p.relative_to(a) for p in a.rglob('*') if p.is_file())
  assert len([f for f in files if f.suffix == '.txt']) == 6   # 5 annotations and the test list
  assert files == sorted(p.relative_to(b) for p in b.rglob('*') if p.is_file())
  for f in files:
    assert (a / f).read_bytes() == (b / f).read_bytes(), f
  c = synthetic.ensure(tmp_path / 'c', **SMALLEST, seed=1)
  annotation = 'annotations/VA_Estimation_Challenge/Train_Set/100-25-96x96.txt'
  assert (a / annotation).read_bytes() != (c / annotation).read_bytes()


def test_ensure_reuses_and_replaces(tmp_path):
  root = tmp_path / 'tree'
  assert synthetic.ensure(root, **SMALLEST) == root
  marker = root / '.complete'
  assert json.loads(marker.read_text()) == dict(SMALLEST, image_size=112, seed=0, version=synthetic.VERSION)
  (root / 'va_test_set.txt').write_text('touched\n')   # a reused tree is not rewritten
  synthetic.ensure(root, **SMALLEST, seed=0)
  assert (root / 'va_test_set.txt').read_text() == 'touched\n'
  synthetic.ensure(root, **dict(SMALLEST, min_frames=31, max_frames=31))
  assert json.loads(marker.read_text())['min_frames'] == 31
  assert (root / 'va_test_set.txt').read_text() == ''
  assert [p.name for p in tmp_path.iterdir()] == ['tree']   # no temporary folder left behind
  assert {v.num_frames for v in map(affwild2.load_video, affwild2.list_videos(root))} == {31}


def test_a_killed_generations_folder_is_removed_at_the_next_start(tmp_path):
  root = tmp_path / 'tree'
  code = f'from affjax.data import synthetic; synthetic.ensure({str(root)!r}, **{dict(SMALLEST, num_train=6)!r})'
  generating = subprocess.Popen([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=str(ROOT)))
  try:
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob('.tree.*/tree/videos/*')) and time.monotonic() < deadline:  # midway
      time.sleep(0.05)
  finally:
    generating.send_signal(signal.SIGKILL)
    generating.wait()
  assert list(tmp_path.glob('.tree.*')), 'the generation ended before it could be killed'
  synthetic.ensure(root, **SMALLEST)
  assert [p.name for p in tmp_path.iterdir()] == ['tree']


def test_refuses_foreign_folders_and_bad_sizes(tmp_path):
  (tmp_path / 'data.txt').write_text('keep me')
  with pytest.raises(FileExistsError, match='no .complete'):
    synthetic.ensure(tmp_path)
  with pytest.raises(FileExistsError, match='not empty'):
    synthetic.generate(tmp_path)
  assert (tmp_path / 'data.txt').read_text() == 'keep me'
  with pytest.raises(ValueError, match='num_train >= 3'):
    synthetic.generate(tmp_path / 'x', num_train=2)
  with pytest.raises(ValueError, match='at least 4 videos'):
    synthetic.generate(tmp_path / 'x', num_train=3, num_validation=1, num_test=0)
  with pytest.raises(ValueError, match='min_frames=30, max_frames=20'):
    synthetic.generate(tmp_path / 'x', min_frames=30, max_frames=20)
  with pytest.raises(ValueError, match='image_size=16'):
    synthetic.generate(tmp_path / 'x', image_size=16)
  assert not (tmp_path / 'x').exists()


def test_tool_writes_and_summarises(tmp_path, capsys, monkeypatch):
  out = tmp_path / 'tree'
  monkeypatch.setattr(sys, 'argv', [str(TOOL), '--out', str(out), '--num_train', '3', '--num_test', '0',
                                    '--num_validation', '2', '--min_frames', '30',
                                    '--max_frames', '30', '--image_size', '48', '--seed', '3'])
  runpy.run_path(str(TOOL), run_name='__main__')
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith(f'wrote {out} in ')
  assert [line.split()[:2] for line in lines[1:]] == [
      ['train', '100-25-96x96'], ['train', '101-30-192x96_left'], ['train', '101-30-192x96_right'],
      ['validation', '102-30-96x96'], ['validation', '103-25-96x96']]
  assert 'extra_rows=' in lines[1] and 'missing_rows=' in lines[4]
  assert 'videos/102-30-96x96.avi' in lines[4] and '29.97 fps 30 frames' in lines[4]
  assert 'audio=batch1/103-25-96x96.wav' in lines[5]
  with Image.open(next((out / 'cropped_aligned/100-25-96x96').iterdir())) as crop:
    assert crop.size == (48, 48)
