"""The Aff-Wild2 layout reader on small hand-written trees with exact expected counts."""

import fractions
import io
import logging
import pathlib
import re

import av
import numpy as np
import pytest
from PIL import Image

from affjax.data import affwild2, names
from affjax.data.affwild2 import AffWild2Error

CHALLENGE = pathlib.Path('annotations/VA_Estimation_Challenge')


def _jpeg(value: int) -> bytes:
  buf = io.BytesIO()
  Image.new('RGB', (16, 16), (value, 100, 200)).save(buf, 'JPEG')
  return buf.getvalue()


def tone(freq: float, seconds: float, rate: int, channels: int) -> np.ndarray:
  """[channels, seconds * rate] float32 sine of amplitude 0.5."""
  t = np.arange(round(seconds * rate)) / rate
  return np.tile(0.5 * np.sin(2 * np.pi * freq * t), (channels, 1)).astype(np.float32)


def _audio_frame(samples: np.ndarray, rate: int) -> av.AudioFrame:
  frame = av.AudioFrame.from_ndarray(samples, format='fltp',
                                     layout='stereo' if len(samples) == 2 else 'mono')
  frame.sample_rate = rate
  return frame


def write_video(path: pathlib.Path, n: int, fps, audio: tuple[np.ndarray, int] | None = None):
  """n frames of 32x32 video at fps, with an AAC track from (samples [C, S], rate) if given."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), 'w') as container:
    video = container.add_stream('mpeg4' if path.suffix == '.avi' else 'libx264', rate=fps)
    video.width = video.height = 32
    video.pix_fmt = 'yuv420p'
    sound = None
    if audio is not None:
      samples, rate = audio
      sound = container.add_stream('aac', rate=rate,
                                   layout='stereo' if len(samples) == 2 else 'mono')
    for i in range(n):
      image = np.full((32, 32, 3), 8 * i % 256, np.uint8)
      for packet in video.encode(av.VideoFrame.from_ndarray(image, format='rgb24')):
        container.mux(packet)
    for packet in video.encode(None):
      container.mux(packet)
    if sound is not None:
      for frame in (_audio_frame(samples, rate), None):
        for packet in sound.encode(frame):
          container.mux(packet)


def write_wav(path: pathlib.Path, samples: np.ndarray, rate: int):
  with av.open(str(path), 'w', format='wav') as container:
    stream = container.add_stream('pcm_s16le', rate=rate, layout='mono')
    for frame in (_audio_frame(samples, rate), None):
      for packet in stream.encode(frame):
        container.mux(packet)


def write_annotation(path: pathlib.Path, rows, header='valence,arousal'):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text('\n'.join([header] + [f'{v},{a}' for v, a in rows]) + '\n')


def write_crops(crop_dir: pathlib.Path, numbers):
  crop_dir.mkdir(parents=True, exist_ok=True)
  for i in numbers:
    (crop_dir / f'{i:05d}.jpg').write_bytes(_jpeg(i))


def peak_hz(audio: np.ndarray) -> float:
  spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
  return np.argmax(spectrum) * affwild2.SAMPLE_RATE / len(audio)


def ramp(n):
  return [(round(-0.9 + 1.8 * i / n, 3), round(0.9 - 1.8 * i / n, 3)) for i in range(n)]


@pytest.fixture(scope='module')
def tree(tmp_path_factory) -> pathlib.Path:
  """a-25: train, 25 fps, 20 frames, 44.1 kHz stereo 440 Hz, annotation 22 rows with -5s,
  crops 1-20 but 11-13, plus 21 and 25.
  b-30_left/_right: train, one .avi at 30 fps, 15 frames, 48 kHz mono; left has 12 rows and
  no crop folder, right 15 rows and every crop.
  c-2997: validation, 30000/1001 fps, 12 frames, its own 440 Hz track and a 1 kHz wav sidecar.
  t-25: test, .mkv at 25 fps, 10 frames, 48 kHz mono."""
  root = tmp_path_factory.mktemp('affwild2')
  write_video(root / 'videos/a-25.mp4', 20, 25, (tone(440, 0.8, 44100, 2), 44100))
  rows = ramp(22)
  rows[5:9] = [(-5, -5)] * 4
  rows[9] = (0.5, -5)
  write_annotation(root / CHALLENGE / 'Train_Set/a-25.txt', rows)
  write_crops(root / 'cropped_aligned/a-25', [*range(1, 11), *range(14, 22), 25])
  (root / 'cropped_aligned/a-25/Thumbs.db').write_bytes(b'not a crop')

  write_video(root / 'batch2/b-30.avi', 15, 30, (tone(300, 0.5, 48000, 1), 48000))
  write_annotation(root / CHALLENGE / 'Train_Set/b-30_left.txt', ramp(12))
  write_annotation(root / CHALLENGE / 'Train_Set/b-30_right.txt', ramp(15))
  write_crops(root / 'cropped_aligned/b-30_right', range(1, 16))

  write_video(root / 'batch1/c-2997.mp4', 12, fractions.Fraction(30000, 1001),
              (tone(440, 0.4, 44100, 1), 44100))
  write_wav(root / 'batch1/c-2997.wav', tone(1000, 0.4, 22050, 1), 22050)
  write_annotation(root / CHALLENGE / 'Validation_Set/c-2997.txt', ramp(12))
  write_crops(root / 'cropped_aligned/c-2997', range(1, 13))

  write_video(root / 'raw_video/t-25.mkv', 10, 25, (tone(200, 0.4, 48000, 1), 48000))
  (root / 'va_test_set.txt').write_text('t-25\n\n')
  return root


@pytest.fixture(scope='module')
def videos(tree) -> dict[str, affwild2.Video]:
  return {e.name: affwild2.load_video(e) for e in affwild2.list_videos(tree)}


def test_frame_boundary_sample():
  assert [affwild2.frame_boundary_sample(k, 25) for k in (0, 1, 20)] == [0, 640, 12800]
  assert [affwild2.frame_boundary_sample(k, 30) for k in (1, 2, 3)] == [533, 1067, 1600]
  # 16000 * 1001 / 30000 = 533.8667 per frame.
  assert [affwild2.frame_boundary_sample(k, 30000 / 1001) for k in (1, 2, 15)] == [534, 1068, 8008]


def test_list_videos(tree):
  entries = affwild2.list_videos(tree)
  assert [(e.split, e.name) for e in entries] == [
      ('train', 'a-25'), ('train', 'b-30_left'), ('train', 'b-30_right'),
      ('validation', 'c-2997'), ('test', 't-25')]
  by_name = {e.name: e for e in entries}
  assert by_name['b-30_left'].media_path == by_name['b-30_right'].media_path == tree / 'batch2/b-30.avi'
  assert by_name['c-2997'].wav_path == tree / 'batch1/c-2997.wav'
  assert [e.wav_path for e in entries if e.name != 'c-2997'] == [None] * 4
  assert by_name['t-25'].annotation_path is None
  assert by_name['t-25'].media_path == tree / 'raw_video/t-25.mkv'
  assert by_name['a-25'].annotation_path == tree / CHALLENGE / 'Train_Set/a-25.txt'
  assert by_name['b-30_left'].crop_dir == tree / 'cropped_aligned/b-30_left'


def test_minus5_runs_long_annotation_and_crops(videos, caplog):
  v = videos['a-25']
  assert v.fps == 25.0 and v.num_frames == 20
  assert v.report == dict(frames=20, annotated=15, unannotated=5, missing_rows=0, extra_rows=2,
                          missing_crops=3, extra_crops=2, audio_padded_samples=0,
                          audio_trimmed_samples=v.report['audio_trimmed_samples'])
  expected_mask = np.ones(20, bool)
  expected_mask[5:10] = False
  np.testing.assert_array_equal(v.label_mask, expected_mask)
  expected = np.array(ramp(22)[:20], np.float32)
  expected[5:10] = 0.0
  np.testing.assert_array_equal(v.labels, expected)
  assert v.labels.dtype == np.float32 and v.labels.shape == (20, 2)
  expected_faces = np.ones(20, bool)
  expected_faces[10:13] = False
  np.testing.assert_array_equal(v.face_mask, expected_faces)
  with caplog.at_level(logging.INFO, logger=affwild2.__name__):
    affwild2.load_video(v.entry)
  assert len(caplog.records) == 1
  assert 'a-25' in caplog.text and 'extra_rows=2' in caplog.text and 'missing_crops=3' in caplog.text


def test_stereo_44k_resampled_to_16k_mono(videos):
  v = videos['a-25']
  raw = affwild2.read_audio(v.entry.media_path)
  assert raw.dtype == np.float32 and raw.ndim == 1
  assert abs(len(raw) - 0.8 * 16000) < 1024   # AAC pads the end by up to one frame
  assert len(v.audio) == affwild2.frame_boundary_sample(20, 25) == 12800
  assert v.report['audio_trimmed_samples'] == len(raw) - 12800 > 0
  np.testing.assert_array_equal(v.audio, raw[:12800])
  assert abs(peak_hz(v.audio) - 440) < 2
  assert np.abs(v.audio).max() <= 1.0


def test_left_right_share_video_and_audio_short_annotation(videos):
  left, right = videos['b-30_left'], videos['b-30_right']
  assert left.fps == right.fps == 30.0 and left.num_frames == right.num_frames == 15
  np.testing.assert_array_equal(left.audio, right.audio)
  assert len(left.audio) == affwild2.frame_boundary_sample(15, 30) == 8000
  assert abs(peak_hz(left.audio) - 300) < 3
  assert left.report['missing_rows'] == 3 and left.report['annotated'] == 12
  np.testing.assert_array_equal(left.label_mask, np.arange(15) < 12)
  np.testing.assert_array_equal(left.labels[12:], 0.0)
  assert left.report['missing_crops'] == 15 and not left.face_mask.any()
  assert right.report['missing_rows'] == 0 and right.report['annotated'] == 15
  assert right.report['missing_crops'] == 0 and right.face_mask.all()


def test_ntsc_rate_exact_and_wav_sidecar_preferred(videos):
  v = videos['c-2997']
  assert v.fps == 30000 / 1001 and v.num_frames == 12
  assert len(v.audio) == affwild2.frame_boundary_sample(12, 30000 / 1001) == 6406
  assert abs(peak_hz(v.audio) - 1000) < 3   # the sidecar's 1 kHz, not the video's 440 Hz
  # The 0.4 s wav (6400 samples at 16 kHz) is 6 samples short of 12 frames at 29.97 fps.
  assert v.report['audio_padded_samples'] == 6 and not v.audio[6400:].any()


def test_test_video_from_mkv(videos):
  v = videos['t-25']
  assert v.entry.split == 'test' and v.num_frames == 10 and v.fps == 25.0
  assert not v.label_mask.any() and not v.labels.any()
  assert v.report['annotated'] == v.report['missing_rows'] == v.report['extra_rows'] == 0
  assert v.report['missing_crops'] == 10
  assert len(v.audio) == 6400


def test_read_jpeg(tree, tmp_path):
  entry = next(e for e in affwild2.list_videos(tree) if e.name == 'a-25')
  assert affwild2.read_jpeg(entry, 0) == _jpeg(1)
  with pytest.raises(AffWild2Error, match='00011.jpg'):
    affwild2.read_jpeg(entry, 10)
  crops = tmp_path / 'crops'
  write_crops(crops, [1])
  (crops / '00002.jpg').write_bytes(_jpeg(2)[:200])
  (crops / '00003.jpg').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
  broken = affwild2.VideoEntry('x', 'train', tmp_path / 'x.mp4', None, None, crops)
  assert affwild2.read_jpeg(broken, 0) == _jpeg(1)
  for k in (1, 2):
    with pytest.raises(AffWild2Error) as error:
      affwild2.read_jpeg(broken, k)
    assert f'corrupt JPEG {crops / f"{k + 1:05d}.jpg"}' in str(error.value)
    assert 're-extract this crop or delete it' in str(error.value)


def _one_video_tree(root: pathlib.Path, rows=None, header='valence,arousal', audio=True):
  write_video(root / 'videos/v.mp4', 5, 25, (tone(440, 0.2, 16000, 1), 16000) if audio else None)
  write_annotation(root / CHALLENGE / 'Train_Set/v.txt', ramp(5) if rows is None else rows, header)
  return affwild2.list_videos(root)[0]


def test_missing_root_and_annotation_folder(tmp_path):
  with pytest.raises(AffWild2Error, match=re.escape(str(tmp_path / 'nope'))):
    affwild2.list_videos(tmp_path / 'nope')
  write_video(tmp_path / 'videos/v.mp4', 2, 25)
  with pytest.raises(AffWild2Error) as error:
    affwild2.list_videos(tmp_path)
  assert str(tmp_path / CHALLENGE) in str(error.value)
  assert str(tmp_path / 'annotations/VA_Set') in str(error.value)


def test_missing_video_names_annotation_base_and_folders(tmp_path):
  write_annotation(tmp_path / CHALLENGE / 'Train_Set/zz-1_right.txt', ramp(3))
  with pytest.raises(AffWild2Error) as error:
    affwild2.list_videos(tmp_path)
  message = str(error.value)
  assert str(tmp_path / CHALLENGE / 'Train_Set/zz-1_right.txt') in message
  assert 'no video zz-1{' in message and f'anywhere below {tmp_path}' in message


@pytest.mark.parametrize('row, match', [
    ((0.1, 'nan'), r'v\.txt line 4: arousal is nan'),
    (('inf', 0.1), r'v\.txt line 4: valence is inf'),
    (('0,2', 0.1), r'v\.txt line 4: expected "valence,arousal"'),
    (('x', 0.1), r"v\.txt line 4: valence 'x' is not a number"),
    ((1.5, 0.1), r'v\.txt line 4: valence 1\.5 is outside \[-1, 1\]'),
])
def test_bad_annotation_row(tmp_path, row, match):
  rows = ramp(5)
  rows[2] = row
  entry = _one_video_tree(tmp_path, rows)
  with pytest.raises(AffWild2Error, match=match):
    affwild2.load_video(entry)


def test_bad_header(tmp_path):
  entry = _one_video_tree(tmp_path, header='arousal,valence')
  with pytest.raises(AffWild2Error, match=r"v\.txt line 1: header is 'arousal,valence'"):
    affwild2.load_video(entry)


def test_no_audio_stream_and_low_rate(tmp_path):
  entry = _one_video_tree(tmp_path, audio=False)
  with pytest.raises(AffWild2Error, match=re.escape(f'{tmp_path / "videos/v.mp4"} has no audio stream')):
    affwild2.load_video(entry)
  write_wav(tmp_path / 'videos/v.wav', tone(440, 0.2, 8000, 1), 8000)
  entry = affwild2.list_videos(tmp_path)[0]
  with pytest.raises(AffWild2Error, match=re.escape(f'{tmp_path / "videos/v.wav"}: audio at 8000 Hz')
                     + '.*re-extract the audio at >= 16 kHz'):
    affwild2.load_video(entry)


def test_audio_folder_sidecar_and_padding(tmp_path):
  entry = _one_video_tree(tmp_path)
  (tmp_path / 'audio').mkdir()
  write_wav(tmp_path / 'audio/v.wav', tone(440, 0.1, 16000, 1), 16000)
  entry = affwild2.list_videos(tmp_path)[0]
  assert entry.wav_path == tmp_path / 'audio/v.wav'
  v = affwild2.load_video(entry)
  assert len(v.audio) == 3200
  assert v.report['audio_padded_samples'] == 1600 and v.report['audio_trimmed_samples'] == 0
  assert not v.audio[1600:].any() and v.audio[:1600].any()


def test_old_layout_and_test_list_options(tmp_path, caplog):
  write_video(tmp_path / 'batch3/v.mov', 2, 25)
  write_annotation(tmp_path / 'annotations/VA_Set/Training_Set/v_left.txt', ramp(2))
  write_annotation(tmp_path / 'annotations/VA_Set/Validation_Set/v.txt', ramp(2))
  with caplog.at_level(logging.WARNING, logger=affwild2.__name__):
    entries = affwild2.list_videos(tmp_path)
  assert f'test list {tmp_path / "va_test_set.txt"} not found: the test split is empty' in caplog.text
  assert [(e.split, e.name, e.media_path.name) for e in entries] == [
      ('train', 'v_left', 'v.mov'), ('validation', 'v', 'v.mov')]
  names = tmp_path / 'elsewhere/names.txt'
  names.parent.mkdir()
  names.write_text('w\nv_left\n')
  with pytest.raises(AffWild2Error, match=re.escape(f'{names} line 2: test name v_left is also in '
                                                    f'{entries[0].annotation_path}')):
    affwild2.list_videos(tmp_path, test_list=str(names))
  names.write_text('w\n\n  w \n')
  with pytest.raises(AffWild2Error, match='line 3: test name w is also in an earlier line'):
    affwild2.list_videos(tmp_path, test_list=str(names))
  names.write_text('\n  v_right \n\n')
  assert [(e.split, e.name) for e in affwild2.list_videos(tmp_path, test_list=str(names))][-1] == (
      'test', 'v_right')
  caplog.clear()
  assert len(affwild2.list_videos(tmp_path, test_list=None)) == 2
  assert not caplog.records


def test_a_video_named_like_the_person_wins(tmp_path):
  write_video(tmp_path / 'videos/v.mp4', 2, 25)
  write_video(tmp_path / 'batch2/v_right.avi', 2, 25)
  for name in ('v_left', 'v_right'):
    write_annotation(tmp_path / CHALLENGE / f'Train_Set/{name}.txt', ramp(2))
  assert [e.media_path for e in affwild2.list_videos(tmp_path)] == [
      tmp_path / 'videos/v.mp4', tmp_path / 'batch2/v_right.avi']


def test_videos_found_by_name_anywhere_below_the_tree_with_one_walk(tmp_path, monkeypatch):
  """Batch folders inside videos/, new_vids/ for the test video, .mp4 and .avi mixed, a symlink back up the tree
  (walked once), and a video-named file inside cropped_aligned/ (not searched, so not a second claim)."""
  write_video(tmp_path / 'videos/batch1/a.mp4', 2, 25)
  write_video(tmp_path / 'videos/batch2/deeper/b.avi', 2, 30)
  write_video(tmp_path / 'new_vids/t.mp4', 2, 25)
  (tmp_path / 'new_vids/wavs').mkdir()
  write_wav(tmp_path / 'new_vids/wavs/t.wav', tone(440, 0.1, 16000, 1), 16000)
  (tmp_path / 'videos/batch2/deeper/up').symlink_to(tmp_path / 'videos')
  write_video(tmp_path / 'cropped_aligned/a/a.mp4', 2, 25)
  write_annotation(tmp_path / CHALLENGE / 'Train_Set/a.txt', ramp(2))
  write_annotation(tmp_path / CHALLENGE / 'Validation_Set/b_left.txt', ramp(2))
  (tmp_path / 'va_test_set.txt').write_text('t\n')
  walks = []
  real_walk = affwild2.os.walk
  monkeypatch.setattr(affwild2.os, 'walk', lambda *a, **k: walks.append(a) or real_walk(*a, **k))
  entries = affwild2.list_videos(tmp_path)
  assert len(walks) == 1
  assert [(e.name, e.media_path.relative_to(tmp_path).as_posix()) for e in entries] == [
      ('a', 'videos/batch1/a.mp4'), ('b_left', 'videos/batch2/deeper/b.avi'), ('t', 'new_vids/t.mp4')]
  assert entries[2].wav_path == tmp_path / 'new_vids/wavs/t.wav'


def test_two_files_claiming_one_video_are_both_named(tmp_path):
  write_video(tmp_path / 'videos/batch1/a.mp4', 2, 25)
  write_video(tmp_path / 'new_vids/a.avi', 2, 25)
  write_annotation(tmp_path / CHALLENGE / 'Train_Set/a_right.txt', ramp(2))
  with pytest.raises(AffWild2Error) as error:
    affwild2.list_videos(tmp_path)
  message = str(error.value)
  assert message.startswith(str(tmp_path / CHALLENGE / 'Train_Set/a_right.txt'))
  assert str(tmp_path / 'videos/batch1/a.mp4') in message and str(tmp_path / 'new_vids/a.avi') in message
  assert 'keep one' in message


@pytest.mark.parametrize('name', ['../../../../x', '/tmp/x', 'a/b', '..', 'a\\b'])
def test_a_test_name_that_is_not_a_file_name_stops_at_the_list(tmp_path, name):
  write_video(tmp_path / 'videos/v.mp4', 2, 25)
  write_annotation(tmp_path / CHALLENGE / 'Train_Set/v.txt', ramp(2))
  (tmp_path / 'va_test_set.txt').write_text(f'v2\n{name}\n')
  with pytest.raises(names.UnsafeNameError, match=re.escape(f'{tmp_path / "va_test_set.txt"} line 2: video name '
                                                            f'{name!r} is not a plain file name')):
    affwild2.list_videos(tmp_path)
