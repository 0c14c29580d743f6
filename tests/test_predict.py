"""affjax.predict on videos made from a real photograph (tests/video_fixtures.py): faces found where they were
placed, the crop convention, one CSV row per frame, and the one-line errors of bad inputs."""
import collections
import fractions
import io
import math
import os
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from affjax.data import affwild2
from affjax.video import decode, extract, faces, views
import video_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]
FACELESS = (30, 31, 32)


@pytest.fixture(scope='module')
def moving_face(tmp_path_factory):
  path = tmp_path_factory.mktemp('videos') / 'astronaut.mp4'
  boxes = video_fixtures.moving_face_video(path, num_frames=40, faceless=FACELESS)
  return path, boxes


def test_face_found_where_it_was_placed(moving_face):
  path, placed = moving_face
  timings = collections.Counter()
  video, boxes = extract.extract(path, needs_audio=True, timings=timings)
  has_face = ~np.isnan(placed[:, 0])
  assert video.num_frames == len(placed) == len(boxes)
  assert video.face_mask[has_face].mean() >= 0.9
  assert not video.face_mask[~has_face].any()
  found = has_face & video.face_mask
  assert np.abs(boxes[found] - placed[found]).max() <= 6.0  # pixels, in a 320x240 frame
  np.testing.assert_allclose(video.times, np.arange(40) / 25, atol=1e-6)
  assert len(video.faces) == 40 and not any(video.faces[k] for k in np.flatnonzero(~video.face_mask))
  assert Image.open(io.BytesIO(video.faces[0])).size == (112, 112)
  # 44.1 kHz stereo resampled to 16 kHz mono: the 1.6 s tone, sample 0 at the first frame
  assert abs(len(video.audio) - 1.6 * 16000) < 0.05 * 16000
  spectrum = np.abs(np.fft.rfft(video.audio[4000:20000]))
  assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) <= 1  # the 440 Hz tone
  # FFmpeg's stereo downmix (as for the training audio, `affwild2.read_audio`): (L + R) / sqrt(2)
  assert abs(np.sqrt(np.mean(video.audio[4000:20000] ** 2)) - 0.3) < 0.02
  assert set(timings) == {'decode', 'detect', 'align', 'audio'}


def test_crop_of_a_face_filling_the_frame_is_the_training_crop():
  """A cropped_aligned-style crop of the photograph (PIL: eyes levelled, a square of CROP_SCALE face boxes,
  112x112), shown as a 336x336 frame, comes back as itself."""
  photo, box, eyes = video_fixtures.astronaut(), video_fixtures.PHOTO_FACE_BOX, video_fixtures.PHOTO_EYES
  centre, side = (box[:2] + box[2:]) / 2, faces.CROP_SCALE * (box[2] - box[0])
  roll = math.degrees(math.atan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0]))
  levelled = Image.fromarray(photo).rotate(roll, resample=Image.BILINEAR, center=tuple(centre))
  reference = np.asarray(levelled.crop(tuple(np.r_[centre - side / 2, centre + side / 2].round().astype(int)))
                         .resize((112, 112), Image.BILINEAR)).astype(np.float64)
  frame = np.asarray(Image.fromarray(reference.astype(np.uint8)).resize((336, 336), Image.BICUBIC))
  face = faces.find_faces(frame[None], faces.HaarDetector(), faces.MainFaceTracker())[0]
  assert face is not None and abs(face.angle) < 2.0
  found_side = face.box[2] - face.box[0]
  assert abs(found_side * faces.CROP_SCALE / 336 - 1) < 0.1
  np.testing.assert_allclose((face.box[:2] + face.box[2:]) / 2, 168, atol=10)
  crop = faces.aligned_crop(frame, face).astype(np.float64)
  assert crop.shape == (112, 112, 3)
  assert np.abs(crop - reference).mean() < 15  # 0-255; a crop 1.4x wider or shifted by a tenth: > 25
  wider = faces.aligned_crop(frame, faces.Face(box=face.box * 1.4 - 0.2 * 168 * 2, angle=face.angle))
  assert np.abs(wider - reference).mean() > 25


def test_main_face_is_the_largest_then_followed():
  tracker = faces.MainFaceTracker()
  small, large = np.array([0, 0, 10, 10.]), np.array([50, 50, 80, 80.])
  np.testing.assert_array_equal(tracker(np.stack([small, large])), large)
  # a larger face appears elsewhere: the tracked one (IoU with the last) is kept
  moved, bigger = large + 2, np.array([100, 0, 160, 60.])
  np.testing.assert_array_equal(tracker(np.stack([bigger, moved])), moved)
  assert tracker(np.zeros((0, 4))) is None
  np.testing.assert_array_equal(tracker(np.stack([small, bigger])), bigger)  # lost: the largest again


def test_audio_warped_onto_the_frame_timeline():
  sr = affwild2.SAMPLE_RATE
  audio = np.random.default_rng(0).normal(size=sr).astype(np.float32)
  constant = views.DecodedVideo('v', [b''] * 20, np.zeros(20, bool), np.arange(20) / 25, audio)
  np.testing.assert_allclose(views.audio_on_frame_timeline(constant), audio[:affwild2.frame_boundary_sample(20, 25.0)],
                             atol=1e-5)
  # frames at 0, 0.1, 0.15, 0.3 s (mean rate 10 fps): virtual frame k spans [k, k + 1) / 10 s
  ramp = np.arange(sr, dtype=np.float32) / sr  # the audio holds its own time
  vfr = views.DecodedVideo('v', [b''] * 4, np.zeros(4, bool), np.array([0.0, 0.1, 0.15, 0.3]), ramp)
  warped = views.audio_on_frame_timeline(vfr)
  starts = [affwild2.frame_boundary_sample(k, vfr.fps) for k in range(4)]
  np.testing.assert_allclose(warped[starts], vfr.times, atol=1e-4)  # each frame's audio starts at its timestamp
  mid = affwild2.frame_boundary_sample(1.5, vfr.fps)  # halfway through frame 1 (0.1 .. 0.15 s)
  np.testing.assert_allclose(warped[mid], 0.125, atol=1e-4)


def _write(path, video: bool):
  """A file with an (empty when asked) video stream and an audio stream of 1024 samples."""
  with av.open(str(path), 'w') as out:
    if video:  # no frame: a zero-length video stream
      stream = out.add_stream('mpeg4', rate=25)
      stream.width, stream.height, stream.pix_fmt = 64, 64, 'yuv420p'
    sound = out.add_stream('aac', rate=16000, layout='mono')
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp', layout='mono')
    frame.sample_rate = 16000
    out.mux(sound.encode(frame))
    out.mux(sound.encode(None))
  return path


@pytest.mark.parametrize('make, message', [
    (lambda d: d / 'missing.mp4', 'not a readable video'),
    (lambda d: (d / 'text.mp4').write_bytes(b'not a video at all' * 10) and d / 'text.mp4', 'not a readable video'),
    (lambda d: _write(d / 'sound.m4a', video=False), 'no video stream'),
    (lambda d: _write(d / 'empty.mkv', video=True), 'zero-length'),
])
def test_bad_inputs_raise_one_line_naming_the_file(tmp_path, make, message):
  path = make(tmp_path)
  with pytest.raises(decode.VideoInputError, match=message) as e:
    extract.extract(path, needs_audio=False)
  assert str(e.value).startswith(f'{path}: ') and '\n' not in str(e.value)


def test_video_without_audio_stops_an_audio_model(tmp_path):
  path = tmp_path / 'silent.mp4'
  with av.open(str(path), 'w') as out:
    stream = out.add_stream('mpeg4', rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 64, 'yuv420p'
    for _ in range(3):
      out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format='rgb24')))
    out.mux(stream.encode(None))
  assert extract.extract(path, needs_audio=False)[0].num_frames == 3
  with pytest.raises(decode.VideoInputError, match='no audio stream'):
    extract.extract(path, needs_audio=True)


def test_folder_without_videos(tmp_path):
  (tmp_path / 'notes.txt').write_text('x')
  proc = subprocess.run([sys.executable, '-m', 'affjax.predict', '--config=configs/cross_attn.py:smoke',
                         f'--workdir={tmp_path}', f'--video={tmp_path}', f'--out={tmp_path}/out'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120, env=_env())
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == f'affjax.predict: {tmp_path}: no video file ' \
      '(.mp4, .avi, .mov, .mkv, .webm, .m4v, .mpg, .mpeg, .wmv, .flv, .3gp) in this folder'


def _env():
  return dict(os.environ, PYTHONPATH=f'{ROOT}:{os.environ.get("PYTHONPATH", "")}')


def _random_run(workdir):
  """A run directory holding a randomly initialised smoke state, saved as training saves it."""
  from affjax import checkpoint, parallel, systems  # pylint: disable=g-import-not-at-top
  from affjax.train import optim, state as state_lib  # pylint: disable=g-import-not-at-top
  from configs import cross_attn  # pylint: disable=g-import-not-at-top
  config = cross_attn.get_config('smoke')
  model, mesh = systems.build_model(config.model, config.compat), parallel.make_mesh()
  state = state_lib.initial_state(model, optim.make_optimizer(config), config, mesh, seed=1)
  saver = checkpoint.Checkpointer(workdir)
  saver.save(1, state, None)
  saver.close()


def test_cli_on_a_folder_with_one_bad_video(moving_face, tmp_path):
  _random_run(tmp_path / 'run')
  videos = tmp_path / 'videos'
  videos.mkdir()
  (videos / 'astronaut.mp4').write_bytes(moving_face[0].read_bytes())
  (videos / 'broken.avi').write_bytes(b'\x00' * 100)
  proc = subprocess.run([sys.executable, '-m', 'affjax.predict', '--config=configs/cross_attn.py:smoke',
                         f'--workdir={tmp_path}/run', f'--video={videos}', f'--out={tmp_path}/out', '--overlay'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())
  assert proc.returncode == 1, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert errors == [line for line in errors if 'broken.avi' in line] and len(errors) == 1
  lines = (tmp_path / 'out' / 'astronaut.csv').read_text().splitlines()
  assert lines[0] == 'frame,time_s,valence,arousal,face'
  rows = np.array([[float(x) for x in line.split(',')] for line in lines[1:]])
  assert rows.shape == (40, 5)
  np.testing.assert_array_equal(rows[:, 0], np.arange(40))
  assert np.all(np.abs(rows[:, 2:4]) <= 1) and np.isfinite(rows).all()
  assert rows[list(FACELESS), 4].sum() == 0 and rows[:, 4].mean() >= 0.9 * 37 / 40
  assert Image.open(tmp_path / 'out' / 'astronaut.png').size == (960, 360)
  with av.open(str(tmp_path / 'out' / 'astronaut.mp4')) as overlay:
    assert sum(1 for _ in overlay.decode(video=0)) == 40
  assert not (tmp_path / 'out' / 'broken.csv').exists()


def tree_video(tree, name: str) -> views.DecodedVideo:
  """Video `name` of a synthetic tree as `affjax.video.extract` would decode it: its released crops (b'' where
  none), frame times at its rate and its audio, read by `affwild2` as the record builder reads them."""
  entry = next(e for e in affwild2.list_videos(tree) if e.name == name)
  video = affwild2.load_video(entry)
  return views.DecodedVideo(name, [affwild2.read_jpeg(entry, k) if f else b'' for k, f in enumerate(video.face_mask)],
                            video.face_mask, np.arange(video.num_frames) / video.fps, video.audio)


@pytest.mark.parametrize('system', ['cross_attn', 'rjca', 'sparse_e2e'])
def test_a_video_is_predicted_as_evaluation_predicts_its_records(system, tiny_tree, tiny_records):
  """The same video (a synthetic tree's, with missing crops) through `views.predict` (in-memory records of its
  crops, audio and frame times) and through `evaluate.predict_split` on the records built from the tree."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top
  from affjax import evaluate, parallel, systems  # pylint: disable=g-import-not-at-top
  from affjax.data import records as records_lib  # pylint: disable=g-import-not-at-top
  from affjax.train import optim, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  from affjax.video import run as run_lib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.{system}').get_config('smoke')
  model, mesh = systems.build_model(config.model, config.compat), parallel.make_mesh()
  state = state_lib.initial_state(model, optim.make_optimizer(config), config, mesh, seed=2)
  run = run_lib.LoadedRun(config=config, mesh=mesh, state=state, eval_step=step_lib.make_eval_step(model), step=0)
  records = records_lib.open_records(tiny_records, 'validation')
  index = records.videos[0]
  decoded = tree_video(tiny_tree, index.name)
  assert not decoded.face_mask.all()  # faceless frames are part of the comparison
  import jax  # pylint: disable=g-import-not-at-top
  with jax.set_mesh(mesh):
    expected = evaluate.predict_split(state, run.eval_step, dataclasses.replace(records, videos=(index,)), config,
                                      mesh)[0].prediction
  got = views.predict(decoded, run)
  assert got.shape == (decoded.num_frames, 2)
  np.testing.assert_allclose(got, expected, atol=2e-4)


def test_variable_frame_rate_times_come_from_the_timestamps(tmp_path):
  path = tmp_path / 'vfr.mkv'
  pts_ms = [0, 40, 120, 140, 300]
  with av.open(str(path), 'w') as out:
    stream = out.add_stream('mpeg4', rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 64, 'yuv420p'
    stream.codec_context.time_base = fractions.Fraction(1, 1000)
    for pts in pts_ms:
      frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), pts % 255, np.uint8), format='rgb24')
      frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
      out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
  times = np.concatenate([t for _, t in decode.frame_batches(path, 2)])
  np.testing.assert_allclose(times, np.array(pts_ms) / 1000, atol=1e-3)


def test_runs_reading_feature_caches_are_refused():
  from configs import lfan, rjca  # pylint: disable=g-import-not-at-top
  config = rjca.get_config('smoke')
  config.data.features_dir = '/tmp/features'
  with pytest.raises(ValueError, match=r'feature cache of frozen backbones \(config.data.features_dir\)'):
    views.check_supported(config)
  views.check_supported(lfan.get_config('smoke'))  # its followers' cache is computed from the video
