"""A small synthetic Aff-Wild2 tree in the release layout, with labels a model can learn.

`generate` writes exactly what `affjax.data.affwild2` reads:
``cropped_aligned/<name>/<NNNNN>.jpg``, videos with sound under ``videos/`` and ``batch1/``,
``annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<name>.txt`` and
``va_test_set.txt``. It is deterministic for a seed; `ensure` generates a tree once and reuses it.

Labels. Every person has a valence curve v(t) and every video an arousal curve a(t): a sum of
three sinusoids with periods of 2.5-8 s and random phases, scaled to cover most of [-0.95, 0.95]
and clipped to it.

What encodes the labels (so faces alone give valence, audio alone arousal, and both beat either):
- faces (PIL-drawn head ellipse, eyes and mouth on a background; skin tone, background, head
  position and size vary per person), uniform pixel noise in [-8, 7]:
  - valence, strongly: the mouth bends from a frown (v = -1) to a smile (v = +1), depth 0.25 of
    the head's half-height, and the skin shifts by v * (+40, 0, -40) in RGB (warmer when positive);
  - arousal, weakly: eye opening, from 6% to 13% of the head's half-height.
- audio (a voice: harmonic tone with 5.5 Hz vibrato and a syllable envelope, plus noise):
  - arousal, strongly: f0 = 100 + 80 * (a + 1) Hz and amplitude 0.05 + 0.175 * (a + 1), syllables
    from 3.5 to 5 per second;
  - valence, weakly: brightness, the k-th harmonic's amplitude is k ** -(tilt - 0.08 * v) with a
    per-video tilt in [1.4, 1.8], so across speakers brightness says little about valence (version 1
    used 1.6 - 0.25 v, and audio alone then predicted valence nearly as well as faces);
    a `_left`/`_right` pair's voice uses the mean of the two valences.

Quirks of the real release that every tree has (the reader's reports show them): a run of -5
rows in every annotation; a run of frames without a crop for every person; the first training
annotation is 1-3 rows longer than its video and the first validation one 3-8 rows shorter; the
2nd and 3rd training names are `<video>_left` / `<video>_right` of one video (shared arousal and
audio, different people and valences); video j runs at 25, 30 or 30000/1001 fps for j mod 3 =
0, 1, 2, has 44.1 kHz stereo (j even) or 48 kHz mono (j odd) AAC sound, sits in ``videos/``
(j even) or ``batch1/`` (j odd); video 2 is an ``.avi`` (MPEG-4 part 2), the others ``.mp4``
(H.264); video 3 has no audio stream but a ``<video>.wav`` sidecar next to it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fractions
import glob
import inspect
import json
import os
import pathlib
import shutil
import tempfile

import av
import numpy as np
from PIL import Image, ImageDraw

from affjax import processes

FRAME_RATES = (fractions.Fraction(25), fractions.Fraction(30), fractions.Fraction(30000, 1001))
AUDIO_FORMATS = ((44100, 'stereo'), (48000, 'mono'))   # by video index parity
VIDEO_FOLDERS = ('videos', 'batch1')                     # by video index parity
AVI_VIDEO, SIDECAR_VIDEO = 2, 3                          # video indices with these quirks
FRAME_HEIGHT = 96   # video frames are 96x96, or 192x96 for a _left/_right pair
FACE_IN_FRAME = 88
TEST_LIST = 'va_test_set.txt'
ANNOTATION_DIRS = {'train': 'Train_Set', 'validation': 'Validation_Set'}
EXTRA_LABEL_FRAMES = 3  # curves run this far past a video so a long annotation continues smoothly


# Bumped whenever the trees change: `ensure` regenerates a tree made by another version.
VERSION = 2

@dataclasses.dataclass(frozen=True)
class Person:
  """Appearance of one annotated face."""
  skin: np.ndarray        # [3] base RGB
  background: np.ndarray  # [3] RGB
  centre: tuple[float, float]  # head centre, fractions of the crop size
  radii: tuple[float, float]   # head half-width and half-height, fractions of the crop size


@dataclasses.dataclass
class _Plan:
  """One video file of the tree and the people annotated in it."""
  index: int
  split: str
  fps: fractions.Fraction
  num_frames: int
  names: list[str]
  annotation: str = 'exact'   # 'long' (1-3 rows past the video) or 'short' (3-8 rows missing)


def _person(rng: np.random.Generator) -> Person:
  return Person(skin=rng.uniform([170, 125, 95], [230, 175, 140]),
                background=rng.uniform(30, 200, size=3),
                centre=tuple(rng.uniform(0.46, 0.54, size=2)),
                radii=(rng.uniform(0.30, 0.36), rng.uniform(0.38, 0.44)))


def _curve(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
  """[n] smooth curve in [-0.95, 0.95]: three slow sinusoids spread over most of the range."""
  t = np.arange(n) / fps
  periods = rng.uniform(2.5, 8.0, size=3)
  x = sum(rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * t / p + rng.uniform(0, 2 * np.pi))
          for p in periods)
  x = (x - x.mean()) / np.abs(x - x.mean()).max()
  return np.clip(rng.uniform(-0.1, 0.1) + rng.uniform(0.8, 0.95) * x, -0.95, 0.95)


def draw_face(person: Person, valence: float, arousal: float, size: int,
              rng: np.random.Generator) -> np.ndarray:
  """[size, size, 3] uint8 face: mouth and skin colour from valence, eye opening from arousal."""
  image = Image.new('RGB', (size, size), tuple(int(c) for c in person.background))
  draw = ImageDraw.Draw(image)
  cx, cy = person.centre[0] * size, person.centre[1] * size
  rx, ry = person.radii[0] * size, person.radii[1] * size
  skin = np.clip(person.skin + valence * np.array([40.0, 0.0, -40.0]), 0, 255)
  draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=tuple(int(c) for c in skin))
  eye_w, eye_h = 0.22 * rx, ry * (0.06 + 0.035 * (arousal + 1))
  for ex in (cx - 0.4 * rx, cx + 0.4 * rx):
    ey = cy - 0.25 * ry
    draw.ellipse([ex - eye_w / 2, ey - eye_h / 2, ex + eye_w / 2, ey + eye_h / 2],
                 fill=(35, 25, 25))
  xs = np.linspace(-0.45 * rx, 0.45 * rx, 11)
  ys = cy + 0.45 * ry + 0.25 * ry * valence * (1 - (xs / xs[-1]) ** 2)
  draw.line([(cx + x, y) for x, y in zip(xs, ys)], fill=(120, 30, 40), width=max(2, size // 28),
            joint='curve')
  noise = np.frombuffer(rng.bytes(size * size * 3), np.uint8).reshape(size, size, 3) >> 4
  return np.clip(np.asarray(image, np.int16) + noise - 8, 0, 255).astype(np.uint8)


def voice(valence: np.ndarray, arousal: np.ndarray, fps: float, sample_rate: int,
          rng: np.random.Generator) -> np.ndarray:
  """[round(N * sample_rate / fps)] float32 voice for per-frame curves [N] (module docstring)."""
  num_samples = round(len(arousal) * sample_rate / fps)
  t = np.arange(num_samples) / sample_rate
  frame_pos = t * fps
  a = np.interp(frame_pos, np.arange(len(arousal)), arousal)
  f0 = (100 + 80 * (a + 1)) * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 2 * np.pi)))
  phase = 2 * np.pi * np.cumsum(f0) / sample_rate
  # Harmonic k has amplitude k ** -(tilt - 0.08 v): a table per frame, interpolated per sample;
  # sin(k phase) by the recurrence sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x).
  exponents = rng.uniform(1.4, 1.8) - 0.08 * np.asarray(valence)
  table = np.arange(1, 11)[None, :] ** -exponents[:, None]
  table /= table.sum(1, keepdims=True)
  two_cos, previous, current = 2 * np.cos(phase), np.zeros_like(phase), np.sin(phase)
  tone = np.zeros_like(phase)
  for k in range(10):
    tone += np.interp(frame_pos, np.arange(len(valence)), table[:, k]) * current
    previous, current = current, two_cos * current - previous
  syllables = np.cumsum(3.5 + 0.75 * (a + 1)) / sample_rate + rng.uniform()
  envelope = 0.3 + 0.7 * np.sin(np.pi * syllables) ** 2
  loudness = 0.05 + 0.175 * (a + 1)
  return (loudness * envelope * tone + rng.normal(0, 0.005, num_samples)).astype(np.float32)


def _audio_frame(samples: np.ndarray, sample_rate: int, layout: str,
                 rng: np.random.Generator) -> av.AudioFrame:
  channels = [samples]
  if layout == 'stereo':
    channels.append(0.9 * samples + rng.normal(0, 0.002, len(samples)))
  frame = av.AudioFrame.from_ndarray(np.stack(channels).astype(np.float32), format='fltp',
                                     layout=layout)
  frame.sample_rate = sample_rate
  return frame


def _encode(container, stream, frame) -> None:
  for packet in stream.encode(frame):
    container.mux(packet)


def _write_video(path: pathlib.Path, frames: list[np.ndarray], fps: fractions.Fraction,
                 audio: av.AudioFrame | None) -> None:
  with av.open(str(path), 'w') as container:
    codec = 'mpeg4' if path.suffix == '.avi' else 'libx264'
    video = container.add_stream(codec, rate=fps)
    video.height, video.width = frames[0].shape[:2]
    video.pix_fmt = 'yuv420p'
    video.codec_context.thread_count = 1   # the same bytes on every machine
    if codec == 'libx264':
      video.options = {'preset': 'ultrafast'}
    sound = None
    if audio is not None:
      sound = container.add_stream('aac', rate=audio.sample_rate, layout=audio.layout.name,
                                   options={'aac_coder': 'fast'})
    for f in frames:
      _encode(container, video, av.VideoFrame.from_ndarray(f, format='rgb24'))
    _encode(container, video, None)
    if sound is not None:
      _encode(container, sound, audio)
      _encode(container, sound, None)


def _write_wav(path: pathlib.Path, audio: av.AudioFrame) -> None:
  with av.open(str(path), 'w', format='wav') as container:
    stream = container.add_stream('pcm_s16le', rate=audio.sample_rate, layout=audio.layout.name)
    _encode(container, stream, audio)
    _encode(container, stream, None)


def _run(rng: np.random.Generator, n: int) -> slice:
  """A run of 3 to max(3, n // 10) consecutive frames inside [0, n)."""
  length = int(rng.integers(3, max(3, n // 10) + 1))
  start = int(rng.integers(0, n - length + 1))
  return slice(start, start + length)


def _plans(num_train, num_validation, num_test, min_frames, max_frames, seed) -> list[_Plan]:
  splits = (['train'] * (num_train - 1) + ['validation'] * num_validation + ['test'] * num_test)
  plans = []
  for j, split in enumerate(splits):
    fps = FRAME_RATES[j % 3]
    n = int(np.random.default_rng((seed, j, 0)).integers(min_frames, max_frames + 1))
    width = 2 * FRAME_HEIGHT if j == 1 else FRAME_HEIGHT
    base = f'{100 + j}-{round(fps)}-{width}x{FRAME_HEIGHT}'
    names = [base + '_left', base + '_right'] if j == 1 else [base]
    annotation = {0: 'long', num_train - 1: 'short'}.get(j, 'exact')
    plans.append(_Plan(index=j, split=split, fps=fps, num_frames=n, names=names,
                       annotation=annotation))
  return plans


def _draw_people(plan: _Plan, seed: int):
  """(rng, arousal [n + EXTRA_LABEL_FRAMES], people, valences): the first draws of a video's random stream."""
  rng = np.random.default_rng((seed, plan.index, 1))
  arousal = _curve(rng, plan.num_frames + EXTRA_LABEL_FRAMES, float(plan.fps))
  people = [_person(rng) for _ in plan.names]
  valences = [_curve(rng, plan.num_frames + EXTRA_LABEL_FRAMES, float(plan.fps)) for _ in plan.names]
  return rng, arousal, people, valences


def _write_plan(root: pathlib.Path, plan: _Plan, image_size: int, seed: int) -> None:
  rng, arousal, people, valences = _draw_people(plan, seed)
  n, fps = plan.num_frames, float(plan.fps)

  # Faces: crops per person (with a run of missing ones) and the video frames showing them.
  frame_width = FRAME_HEIGHT * len(people)
  video_frames = [np.empty((FRAME_HEIGHT, frame_width, 3), np.uint8) for _ in range(n)]
  margin = (FRAME_HEIGHT - FACE_IN_FRAME) // 2
  for p, (name, person, valence) in enumerate(zip(plan.names, people, valences)):
    crop_dir = root / 'cropped_aligned' / name
    crop_dir.mkdir(parents=True)
    missing = _run(rng, n)
    for k in range(n):
      face = draw_face(person, valence[k], arousal[k], image_size, rng)
      if not missing.start <= k < missing.stop:
        Image.fromarray(face).save(crop_dir / f'{k + 1:05d}.jpg', quality=90)
      tile = video_frames[k][:, p * FRAME_HEIGHT:(p + 1) * FRAME_HEIGHT]
      tile[:] = person.background.astype(np.uint8)
      tile[margin:margin + FACE_IN_FRAME, margin:margin + FACE_IN_FRAME] = np.asarray(
          Image.fromarray(face).resize((FACE_IN_FRAME, FACE_IN_FRAME), Image.BILINEAR))

  # Annotations: a -5 run each; the first training one too long, the first validation one short.
  if plan.split != 'test':
    rows = n
    if plan.annotation == 'long':
      rows += int(rng.integers(1, EXTRA_LABEL_FRAMES + 1))
    elif plan.annotation == 'short':
      rows -= int(rng.integers(3, 9))
    folder = root / 'annotations' / 'VA_Estimation_Challenge' / ANNOTATION_DIRS[plan.split]
    for name, valence in zip(plan.names, valences):
      labels = np.stack([valence, arousal], 1)[:rows]
      labels[_run(rng, min(rows, n))] = -5
      lines = ['valence,arousal'] + [f'{x:.4f},{y:.4f}' if x != -5 else '-5,-5' for x, y in labels]
      (folder / f'{name}.txt').write_text('\n'.join(lines) + '\n')

  # Sound: one voice for the video (a pair's valence is the mean of the two).
  sample_rate, layout = AUDIO_FORMATS[plan.index % 2]
  samples = voice(np.mean(valences, 0)[:n], arousal[:n], fps, sample_rate, rng)
  audio = _audio_frame(samples, sample_rate, layout, rng)
  folder = root / VIDEO_FOLDERS[plan.index % 2]
  extension = '.avi' if plan.index == AVI_VIDEO else '.mp4'
  media = folder / (plan.names[0].removesuffix('_left') + extension)
  if plan.index == SIDECAR_VIDEO:
    _write_wav(media.with_suffix('.wav'), audio)
    audio = None
  _write_video(media, video_frames, plan.fps, audio)


def generate(root, *, num_train=12, num_validation=4, num_test=2, min_frames=240, max_frames=480,
             image_size=112, seed=0) -> pathlib.Path:
  """Writes a synthetic tree into `root` (absent or empty) and returns it as a Path.

  num_train counts annotated names, so the `_left`/`_right` pair makes num_train - 1 training
  videos. Needs num_train >= 3, num_validation >= 1, at least 4 videos and min_frames >= 30 so
  that every quirk of the module docstring appears.
  """
  root = pathlib.Path(root)
  num_videos = num_train - 1 + num_validation + num_test
  if num_train < 3 or num_validation < 1 or num_test < 0 or num_videos < 4:
    raise ValueError(f'num_train={num_train}, num_validation={num_validation}, '
                     f'num_test={num_test}: need num_train >= 3, num_validation >= 1 and at '
                     'least 4 videos (num_train - 1 + num_validation + num_test) for every '
                     'quirk to appear')
  if not 30 <= min_frames <= max_frames:
    raise ValueError(f'min_frames={min_frames}, max_frames={max_frames}: need 30 <= min <= max')
  if image_size < 32:
    raise ValueError(f'image_size={image_size}: need >= 32 pixels for a legible face')
  if root.exists() and any(root.iterdir()):
    raise FileExistsError(f'{root} is not empty; delete it or choose another folder')
  root.mkdir(parents=True, exist_ok=True)
  plans = _plans(num_train, num_validation, num_test, min_frames, max_frames, seed)
  for folder in VIDEO_FOLDERS:
    (root / folder).mkdir()
  for split in ANNOTATION_DIRS.values():
    (root / 'annotations' / 'VA_Estimation_Challenge' / split).mkdir(parents=True)
  # Videos are independent (own random streams), so threads keep the output deterministic; file
  # writes, JPEG and video encoding release the GIL.
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    list(pool.map(lambda plan: _write_plan(root, plan, image_size, seed), plans))
  (root / TEST_LIST).write_text(''.join(p.names[0] + '\n' for p in plans if p.split == 'test'))
  return root


def true_labels(root) -> dict[str, tuple[str, np.ndarray]]:
  """name -> (split, `[N, 2]` (valence, arousal) of every frame) of every person of the tree at `root`, recomputed
  from the arguments in its `.complete`: the curves the faces and voices were drawn from, also for the test videos
  (whose annotations the tree, like the release, does not have)."""
  arguments = _completed_with(pathlib.Path(root))
  if arguments is None:
    raise FileNotFoundError(f'{root} holds no complete synthetic tree (no .complete)')
  plans = _plans(*(arguments[k] for k in ('num_train', 'num_validation', 'num_test', 'min_frames', 'max_frames',
                                           'seed')))
  out = {}
  for plan in plans:
    _, arousal, _, valences = _draw_people(plan, arguments['seed'])
    for name, valence in zip(plan.names, valences):
      out[name] = (plan.split, np.stack([valence, arousal], 1)[:plan.num_frames].astype(np.float32))
  return out


def write_test_labels(root, out) -> list[str]:
  """Writes `<out>/<name>.txt` (`valence,arousal`, one row per frame) for every test video of the tree at `root`
  (`true_labels`); keep `out` outside the tree's release layout. Returns the names."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  names = []
  for name, (split, labels) in true_labels(root).items():
    if split == 'test':
      (out / f'{name}.txt').write_text('valence,arousal\n' + ''.join(f'{v:.4f},{a:.4f}\n' for v, a in labels))
      names.append(name)
  return names


def ensure(root, **kwargs) -> pathlib.Path:
  """`generate(root, **kwargs)` once: reuses root if its `.complete` records the same arguments.

  A new tree is generated next to root and renamed into place, so root is only ever replaced by
  a complete tree. An existing root without `.complete` that is not empty is never touched.
  """
  root = pathlib.Path(root)
  bound = inspect.signature(generate).bind(root, **kwargs)
  bound.apply_defaults()
  arguments = {k: v for k, v in bound.arguments.items() if k != 'root'}
  config = dict(arguments, version=VERSION)
  if _completed_with(root) == config:
    return root
  if root.is_dir() and any(root.iterdir()) and _completed_with(root) is None:
    raise FileExistsError(f'{root} is not empty and holds no synthetic tree (no .complete); '
                          'delete it or choose another folder')
  root.parent.mkdir(parents=True, exist_ok=True)
  _remove_abandoned_work(root)
  work = pathlib.Path(tempfile.mkdtemp(prefix=f'.{root.name}.{os.getpid()}-{processes.start_time(os.getpid())}.',
                                       dir=root.parent))
  try:
    generate(work / 'tree', **arguments)
    (work / 'tree' / '.complete').write_text(json.dumps(config, sort_keys=True))
    if _completed_with(root) != config:  # else a concurrent ensure finished first: keep its tree
      if root.exists():  # a tree generated with other arguments, or an empty folder
        os.rename(root, work / 'old')
      os.rename(work / 'tree', root)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return root


def _remove_abandoned_work(root: pathlib.Path) -> None:
  """Deletes the work folders `ensure` left next to root when killed (their process is gone); those of running
  generations stay."""
  for work in root.parent.glob(f'.{glob.escape(root.name)}.*'):
    owner = work.name[len(root.name) + 2:].split('.', 1)[0]
    pid, _, started = owner.partition('-')
    if pid.isdigit() and not processes.is_running(int(pid), None if started in ('', 'None') else started):
      shutil.rmtree(work, ignore_errors=True)


def _completed_with(root: pathlib.Path) -> dict | None:
  """The arguments recorded in root/.complete, or None."""
  try:
    return json.loads((root / '.complete').read_text())
  except (OSError, ValueError):
    return None
