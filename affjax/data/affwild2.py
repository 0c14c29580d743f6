"""Reader of the official Aff-Wild2 release layout (valence/arousal track).

Layout read (``root`` is the folder of the release)::

  cropped_aligned/<name>/<NNNNN>.jpg       1-based, 5-digit frame numbers, face crops
  annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<name>.txt
      (older releases: annotations/VA_Set/{Train_Set|Training_Set,Validation_Set}/<name>.txt)
  <any folders>/<base>.{mp4,avi,mkv,mov}  videos anywhere below root (videos/batch1/, new_vids/, raw_video/, ...),
      found by name through one index of the tree (cropped_aligned/ and annotations/ are not searched)
  <base>.wav next to the video or anywhere else below root   (optional; preferred over the video's audio)
  va_test_set.txt                           test video names, one per line

``<base>_left`` / ``<base>_right`` are two annotated people in one video: they share its file,
fps and audio (a video named like the person itself is used instead if there is one). Every frame of a video is kept on the timeline; what is missing (label rows,
crops) is masked and counted in ``Video.report``, never filled in as if it were valid.
Frame ``k`` (0-based) owns the audio samples ``[frame_boundary_sample(k, fps),
frame_boundary_sample(k + 1, fps))`` of the 16 kHz mono waveform.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import pathlib
import re

import av
import numpy as np
from PIL import Image

from affjax.data import names as names_lib

SAMPLE_RATE = 16000

SPLITS = ('train', 'validation', 'test')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.mov')
NOT_SEARCHED = ('cropped_aligned', 'annotations')  # folders of root that hold no video (the crops: millions of files)
# (annotation set folder, {split folder: split}); the first set folder that exists is used.
ANNOTATION_SETS = (
    ('VA_Estimation_Challenge', {'Train_Set': 'train', 'Validation_Set': 'validation'}),
    ('VA_Set', {'Train_Set': 'train', 'Training_Set': 'train', 'Validation_Set': 'validation'}),
)
UNANNOTATED = -5.0
_CROP_NAMES = re.compile(r'^\d{5}\.jpg$', re.MULTILINE)  # in a listing joined by newlines
_PAIR_SUFFIX = re.compile(r'_(left|right)$')

log = logging.getLogger(__name__)


class AffWild2Error(ValueError):
  """Bad input in an Aff-Wild2 tree; the message names the file and says how to fix it."""


def frame_boundary_sample(k: int, fps: float) -> int:
  """First audio sample of frame k: floor(k*SAMPLE_RATE/fps + 0.5).

  Frame k owns samples [b(k), b(k+1)).
  """
  return math.floor(k * SAMPLE_RATE / fps + 0.5)


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  """One annotated (or test) person of the release."""
  name: str                      # annotation / crop name, e.g. '10-60-1280x720_right'
  split: str                     # 'train' | 'validation' | 'test'
  media_path: pathlib.Path       # the video file; '_left'/'_right' share the base video's file
  wav_path: pathlib.Path | None  # '<base>.wav' sidecar, read instead of the video's audio
  annotation_path: pathlib.Path | None  # None for test videos
  crop_dir: pathlib.Path         # root/'cropped_aligned'/name (if absent, every crop is missing)


@dataclasses.dataclass
class Video:
  """Everything of one entry on its frame timeline of N frames."""
  entry: VideoEntry
  fps: float                 # exact container rate, never rounded
  num_frames: int            # N = frames of the video stream
  labels: np.ndarray         # [N, 2] float32 (valence, arousal); 0.0 where not annotated
  label_mask: np.ndarray     # [N] bool: row present and neither value is -5
  face_mask: np.ndarray      # [N] bool: crop <k+1:05d>.jpg exists
  audio: np.ndarray          # [frame_boundary_sample(N, fps)] float32 mono 16 kHz in [-1, 1]
  report: dict[str, int]     # counts of what was found missing or extra


def base_name(name: str) -> str:
  """The video a name belongs to: '10-60-1280x720_right' -> '10-60-1280x720'."""
  return _PAIR_SUFFIX.sub('', name)


def _annotation_folders(root: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
  searched = []
  for set_name, split_dirs in ANNOTATION_SETS:
    set_dir = root / 'annotations' / set_name
    found = [(split, set_dir / d) for d, split in split_dirs.items() if (set_dir / d).is_dir()]
    if found:
      return found
    searched.append(str(set_dir))
  raise AffWild2Error(
      f'no annotation folder under {root}: searched {", ".join(searched)} for '
      'Train_Set/Validation_Set; unpack the VA annotations of the release into '
      f'{root / "annotations"}')


def _index_media(root: pathlib.Path) -> tuple[dict[str, list[pathlib.Path]], dict[str, list[pathlib.Path]]]:
  """Maps file stem -> every video file, and -> every wav, anywhere below root (one walk; symlinked folders
  followed once; NOT_SEARCHED skipped)."""
  videos, wavs, seen = {}, {}, set()
  for folder, dirs, files in os.walk(root, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:  # a symlink to a folder already walked
      dirs.clear()
      continue
    seen.add(real)
    dirs[:] = sorted(d for d in dirs if not (folder == str(root) and d in NOT_SEARCHED))
    for file_name in sorted(files):
      stem, ext = os.path.splitext(file_name)
      index = videos if ext.lower() in VIDEO_EXTENSIONS else wavs if ext.lower() == '.wav' else None
      if index is not None:
        index.setdefault(stem, []).append(pathlib.Path(folder) / file_name)
  return videos, wavs


def _unique(index: dict[str, list[pathlib.Path]], stem: str, source) -> pathlib.Path | None:
  """The one file of `index` named `stem`, None if there is none; two or more are an error naming them all."""
  found = index.get(stem, [])
  if len(found) > 1:
    raise AffWild2Error(f'{source}: {len(found)} files are named {stem}: {", ".join(map(str, found))}; keep one '
                        '(delete or rename the others)')
  return found[0] if found else None


def _test_list_path(root: pathlib.Path, test_list: str | None) -> pathlib.Path | None:
  """The test list file, or None (no test split: not asked for, or missing with a warning)."""
  if test_list is None:
    return None
  path = pathlib.Path(test_list)
  path = path if path.is_absolute() else root / path
  if not path.is_file():
    log.warning('test list %s not found: the test split is empty', path)
    return None
  return path


def list_videos(root, test_list: str | None = 'va_test_set.txt') -> list[VideoEntry]:
  """Every annotated and test entry of the tree, sorted by (split order, name).

  Args:
    root: the release folder.
    test_list: file of test names (relative to root, or absolute); None: no test split. A file
      that does not exist gives an empty test split and a warning.

  Raises:
    AffWild2Error: missing root, no annotation folder, a name in two places, a video that cannot be
      found or two files that claim one video (the message names the annotation and the files).
    names.UnsafeNameError: a test name that is not a plain file name.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise AffWild2Error(f'Aff-Wild2 root {root} is not a directory; pass the folder that holds '
                        'annotations/, cropped_aligned/ and the video folders')
  names: dict[str, tuple[str, pathlib.Path | None]] = {}
  for split, folder in _annotation_folders(root):
    for ann in sorted(folder.glob('*.txt')):
      names_lib.check(ann.stem, str(ann))
      if ann.stem in names:
        raise AffWild2Error(f'{ann}: {ann.stem} is also annotated in {names[ann.stem][1]}; '
                            'keep one annotation file per name')
      names[ann.stem] = (split, ann)
  test_path = _test_list_path(root, test_list)
  if test_path is not None:
    for line_no, line in enumerate(test_path.read_text(encoding='utf-8-sig').splitlines(), 1):
      name = line.strip()
      if not name:
        continue
      names_lib.check(name, f'{test_path} line {line_no}')
      if name in names:
        where = names[name][1] or 'an earlier line'
        raise AffWild2Error(f'{test_path} line {line_no}: test name {name} is also in {where}; '
                            'list each test name once and never annotate it')
      names[name] = ('test', None)

  videos, wavs = _index_media(root)
  entries = []
  for name, (split, ann) in names.items():
    base = base_name(name)
    source = ann if ann is not None else test_path
    media = _unique(videos, name, source) or _unique(videos, base, source)
    if media is None:
      raise AffWild2Error(
          f'{source}: no video {base}{{{",".join(VIDEO_EXTENSIONS)}}} found anywhere below {root} (not searched: '
          f'{", ".join(NOT_SEARCHED)}); put the video in any other folder of the tree')
    sidecar = media.with_suffix('.wav')
    wav = sidecar if sidecar.is_file() else _unique(wavs, media.stem, source)
    entries.append(VideoEntry(name=name, split=split, media_path=media, wav_path=wav,
                              annotation_path=ann, crop_dir=root / 'cropped_aligned' / name))
  return sorted(entries, key=lambda e: (SPLITS.index(e.split), e.name))


def _parse_float(text: str, path: pathlib.Path, line_no: int, field: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise AffWild2Error(f'{path} line {line_no}: {field} {text!r} is not a number; '
                        'fix the row (use -5 for an unannotated frame)') from None
  if not math.isfinite(value):
    raise AffWild2Error(f'{path} line {line_no}: {field} is {text.strip()}; '
                        'fix the row (use -5 for an unannotated frame)')
  if value != UNANNOTATED and not -1.0 <= value <= 1.0:
    raise AffWild2Error(f'{path} line {line_no}: {field} {value} is outside [-1, 1] and not -5; '
                        'fix the row')
  return value


def read_annotation(path) -> np.ndarray:
  """Rows of a `valence,arousal` file as [R, 2] float64, -5 kept as is.

  Raises AffWild2Error naming the file and the (1-based) line of a bad header or row.
  """
  path = pathlib.Path(path)
  lines = path.read_text(encoding='utf-8-sig').splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  header = lines[0].strip() if lines else ''
  if [f.strip().lower() for f in header.split(',')] != ['valence', 'arousal']:
    raise AffWild2Error(f'{path} line 1: header is {header!r}, expected "valence,arousal"; '
                        'this is not a valence/arousal annotation file')
  rows = np.empty((len(lines) - 1, 2), np.float64)
  for i, line in enumerate(lines[1:]):
    fields = line.split(',')
    if len(fields) != 2:
      raise AffWild2Error(f'{path} line {i + 2}: expected "valence,arousal", got {line!r}; '
                          'fix the row')
    rows[i] = [_parse_float(f, path, i + 2, n) for f, n in zip(fields, ('valence', 'arousal'))]
  return rows


def read_audio(path, *, sample_rate=SAMPLE_RATE) -> np.ndarray:
  """First audio stream of a video or wav as float32 mono at `sample_rate`, clipped to [-1, 1].

  Decoded with PyAV, downmixed and resampled by av.AudioResampler (format 'flt', layout 'mono'),
  flushed at the end. Raises AffWild2Error for a file without audio, a source rate below
  `sample_rate`, or a file PyAV cannot decode.
  """
  path = pathlib.Path(path)
  chunks = []
  try:
    with av.open(str(path)) as container:
      if not container.streams.audio:
        raise AffWild2Error(f'{path} has no audio stream; extract the audio to '
                            f'{path.with_suffix(".wav")} or use a video with sound')
      stream = container.streams.audio[0]
      if stream.rate < sample_rate:
        raise AffWild2Error(f'{path}: audio at {stream.rate} Hz is below {sample_rate} Hz; '
                            f're-extract the audio at >= {sample_rate // 1000} kHz')
      resampler = av.AudioResampler(format='flt', layout='mono', rate=sample_rate)
      for frame in container.decode(stream):
        chunks.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
      chunks.extend(f.to_ndarray()[0] for f in resampler.resample(None))
  except av.FFmpegError as e:
    raise AffWild2Error(f'{path}: cannot decode audio ({e}); re-extract or re-download the file')
  audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
  return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


def _video_timeline(path: pathlib.Path) -> tuple[float, int]:
  """(exact fps, number of frames) of the first video stream."""
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise AffWild2Error(f'{path} has no video stream; replace it with the released video')
      stream = container.streams.video[0]
      rate = stream.average_rate or stream.guessed_rate or stream.base_rate
      if not rate:
        raise AffWild2Error(f'{path}: the video stream states no frame rate; remux it with one')
      frames = stream.frames
      if frames <= 0:
        frames = sum(1 for p in container.demux(stream) if p.size)
  except av.FFmpegError as e:
    raise AffWild2Error(f'{path}: cannot read the video ({e}); re-download the file')
  return float(rate), frames


def crop_names(crop_dir: pathlib.Path) -> list[str]:
  """The crops (`<NNNNN>.jpg`) of a crop folder, sorted; [] if it does not exist (one regex pass over the
  listing: a folder holds thousands)."""
  if not crop_dir.is_dir():
    return []
  return sorted(_CROP_NAMES.findall('\n'.join(os.listdir(crop_dir))))


def _face_mask(crop_dir: pathlib.Path, n: int) -> tuple[np.ndarray, int]:
  """(crop present per frame [N], count of crops numbered outside 1..N)."""
  k = np.array([int(name[:5]) - 1 for name in crop_names(crop_dir)], np.int64)
  inside = (k >= 0) & (k < n)
  mask = np.zeros(n, bool)
  mask[k[inside]] = True
  return mask, int((~inside).sum())


def load_video(entry: VideoEntry) -> Video:
  """Reads one entry's timeline, labels, masks and audio; logs a line if anything is off."""
  fps, n = _video_timeline(entry.media_path)
  labels = np.zeros((n, 2), np.float32)
  label_mask = np.zeros(n, bool)
  report = dict(frames=n, annotated=0, unannotated=0, missing_rows=0, extra_rows=0)
  if entry.annotation_path is not None:
    rows = read_annotation(entry.annotation_path)
    kept = rows[:n]
    valid = np.all(kept != UNANNOTATED, axis=1)
    labels[:len(kept)][valid] = kept[valid]
    label_mask[:len(kept)] = valid
    report.update(annotated=int(valid.sum()), unannotated=int((~valid).sum()),
                  missing_rows=n - len(kept), extra_rows=len(rows) - len(kept))

  face_mask, extra_crops = _face_mask(entry.crop_dir, n)
  report.update(missing_crops=int(n - face_mask.sum()), extra_crops=extra_crops)

  target = frame_boundary_sample(n, fps)
  audio = read_audio(entry.wav_path or entry.media_path)
  report.update(audio_padded_samples=max(target - len(audio), 0),
                audio_trimmed_samples=max(len(audio) - target, 0))
  audio = np.pad(audio[:target], (0, target - min(len(audio), target)))

  off = {k: v for k, v in report.items() if k not in ('frames', 'annotated') and v}
  if off:
    log.info('%s (%s, %d frames at %.5g fps): %s', entry.name, entry.split, n, fps,
             ', '.join(f'{k}={v}' for k, v in off.items()))
  return Video(entry=entry, fps=fps, num_frames=n, labels=labels, label_mask=label_mask,
               face_mask=face_mask, audio=audio, report=report)


def read_jpeg(entry: VideoEntry, k: int) -> bytes:
  """The crop of frame k (0-based) as released, after checking that it decodes."""
  path = entry.crop_dir / f'{k + 1:05d}.jpg'
  try:
    data = path.read_bytes()
  except OSError as e:
    raise AffWild2Error(f'cannot read crop {path}: {e.strerror}; check face_mask before reading '
                        'a crop') from None
  try:
    if data[:2] != b'\xff\xd8':
      raise ValueError('does not start with the JPEG marker FF D8')
    with Image.open(io.BytesIO(data)) as image:
      image.load()
  except (ValueError, OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise AffWild2Error(f'corrupt JPEG {path}: {e}; re-extract this crop or delete it '
                        '(it is then treated as missing)') from None
  return data
