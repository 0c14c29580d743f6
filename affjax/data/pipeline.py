"""Grain input pipeline: windows of T frames assembled from consecutive per-video chunk records.

A window is (video, start): frames [start, start + T) of one video (frames past the video's end are
padding, mask False), with one contiguous 16 kHz audio segment from which each frame's audio window
(`audio_window` samples centred on the frame) is sliced on device at `audio_offsets[t]`. Audio outside
the video is zeros, so every frame's window is exactly centred.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
import pathlib

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from affjax import folds
from affjax.data import affwild2, augment, builder, names


@dataclasses.dataclass(frozen=True)
class VideoIndex:
  name: str
  num_frames: int
  fps: float
  first_record: int
  num_chunks: int
  num_rows: int  # rows of the video's annotation file (every frame for test videos)


class DamagedRecordsError(RuntimeError):
  """A shard that is missing, of the wrong size or unreadable; the message names it, its split and the fix."""


def repair_advice(directory: str, metadata) -> str:
  """How to rebuild the records at `directory`: the exact command for frame records, else the tool that wrote them."""
  build = metadata.get('build')
  if build is None:  # a feature cache
    return (f'delete {directory} and rerun the command that built it (tools/cache_features.py or '
            'tools/vggish_features.py)')
  records_dir = pathlib.Path(directory).parents[2]  # <records_dir>/affwild2/chunk<C>/<version>
  return 'rebuild them: ' + builder.rebuild_command(build['manual_dir'], records_dir, int(metadata['chunk_size']),
                                                    build['test_list'])


class ShardSource:
  """One split's records (a tfds ArrayRecord data source) whose read errors name the shard, the split and the fix."""

  def __init__(self, directory: str, split: str, info):
    self.directory, self.split = directory, split
    self.shards = list(zip(info.splits[split].filenames, np.cumsum(info.splits[split].shard_lengths)))
    self.advice = repair_advice(directory, info.metadata)
    self.source = tfds.builder_from_directory(directory).as_data_source(split)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int):
    if not 0 <= i < len(self.source):
      raise IndexError(f'record {i} of the {self.split} split: it holds {len(self.source)}')  # ends iteration too
    try:
      return self.source[i]
    except Exception as e:  # array_record raises RuntimeError for a damaged or missing file
      shard = next((name for name, end in self.shards if i < end), self.shards[-1][0])
      raise DamagedRecordsError(f'cannot read record {i} of the {self.split} split from the shard '
                                f'{self.directory}/{shard} ({e}); {self.advice}') from e


def check_shards(directory: str, split: str, info) -> None:
  """Raises DamagedRecordsError if a shard of `split` is missing or not the size it was written with."""
  for name, size in info.metadata.get('shards', {}).get(split, {}).items():
    path = pathlib.Path(directory) / name
    found = path.stat().st_size if path.exists() else None
    if found != size:
      problem = 'is missing' if found is None else f'holds {found} bytes, but {size} were written'
      raise DamagedRecordsError(f'the {split} shard {path} {problem}; {repair_advice(directory, info.metadata)}')


class ConcatSource:
  """Several record sources read as one: index i runs through the first source, then the next, ..."""

  def __init__(self, sources):
    self.sources = sources
    self.offsets = np.cumsum([0] + [len(s) for s in sources])

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def __getitem__(self, i: int):
    k = int(np.searchsorted(self.offsets, i, side='right')) - 1
    return self.sources[k][i - int(self.offsets[k])]


@dataclasses.dataclass(frozen=True)
class Records:
  """One partition of the built records ('train', 'validation' or 'test'): its data source and per-video index.

  `source_splits` are the record splits read, concatenated in order (a cross-validation fold's partitions draw
  on both 'train' and 'validation'); `side` is a feature cache of the same chunks whose `<part>_features` join
  every window the frame loader reads (LFAN's VGGish features).
  """
  directory: str
  split: str
  chunk_size: int
  videos: tuple[VideoIndex, ...]
  features: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # feature cache: part -> shape
  view: str = 'frames'  # a feature cache's `config.data.view` ('clips': features of the clip ending at a frame)
  source_splits: tuple[str, ...] = ()  # () = (split,)
  side: Records | None = None

  @functools.cached_property
  def source(self):
    info = tfds.builder_from_directory(self.directory).info
    sources = [ShardSource(self.directory, s, info) for s in self.source_splits or (self.split,) if s in info.splits]
    return sources[0] if len(sources) == 1 else ConcatSource(sources)  # none: a split without videos

  def __getstate__(self):  # the data source is reopened in each grain worker
    return {k: v for k, v in self.__dict__.items() if k != 'source'}

  def __setstate__(self, state):
    self.__dict__.update(state)


def open_records(directory: str, split: str, fold: int = -1, side_directory: str = '') -> Records:
  """The `split` partition of the records at `directory`.

  With `fold` in [0, 6) (LFAN's cross-validation, `affjax.folds.fold_split`), 'train' and 'validation' are that
  fold's partitions of the official training and validation videos; 'test' stays the official test split.
  `side_directory`: a feature cache built from these records (`affjax.data.feature_cache`), joined to every window.
  """
  info = tfds.builder_from_directory(directory).info
  meta = info.metadata['videos']

  def index(record_split: str, offset: int) -> list[VideoIndex]:
    check_shards(directory, record_split, info)
    where = f'{directory}/metadata.json ({record_split} split)'
    return [VideoIndex(name=names.check(v['name'], where), num_frames=int(v['num_frames']), fps=float(v['fps']),
                       first_record=offset + int(v['first_record']), num_chunks=int(v['num_chunks']),
                       num_rows=annotation_rows(v['num_frames'], v['report'])) for v in meta[record_split]]

  if fold < 0 or split == 'test':
    videos, source_splits = index(split, 0), ()
  else:
    train = index('train', 0)
    validation = index('validation', sum(v.num_chunks for v in train))  # after every 'train' record
    fold_names = folds.fold_split([v.name for v in train], [v.name for v in validation], fold)[split == 'validation']
    by_name = {v.name: v for v in train + validation}
    videos, source_splits = [by_name[name] for name in fold_names], ('train', 'validation')
  side = open_records(side_directory, split, fold) if side_directory else None
  if side is not None and (side.videos != tuple(videos) or info.metadata.get('fingerprint') !=
                           tfds.builder_from_directory(side_directory).info.metadata.get('fingerprint')):
    raise ValueError(f'the feature cache {side_directory} was not built from the records {directory} (its '
                     f'{split} videos or the tree they were read from differ); delete it and rebuild it from these '
                     'records (tools/vggish_features.py or tools/cache_features.py)')
  return Records(directory=directory, split=split, chunk_size=int(info.metadata['chunk_size']),
                 videos=tuple(videos), view=info.metadata.get('view', 'frames'),
                 features={k: tuple(int(n) for n in np.atleast_1d(v))  # (width,) or F in caches without shapes
                           for k, v in info.metadata.get('features', {}).items()},
                 source_splits=source_splits, side=side)


def open_partition(directory: str, split: str, config) -> Records:
  """The `split` partition of a run: `config.data.fold`'s, with the feature cache `config.data.side_features_dir`
  joined to the frame records."""
  return open_records(directory, split, config.data.fold, config.data.side_features_dir)


def annotation_rows(num_frames: int, report: dict[str, int]) -> int:
  """Rows of the annotation file from the reader's report (the video's frames for test videos)."""
  return int(num_frames) - int(report.get('missing_rows', 0)) + int(report.get('extra_rows', 0))


def window_starts(num_frames: int, window: int, hop: int) -> np.ndarray:
  """Starts 0, hop, 2*hop, ... of windows covering every frame; a start whose frames are all covered by the
  previous window is skipped, and the last window may run past the end (padded and masked)."""
  starts = np.arange(0, num_frames, hop)
  return starts[(starts == 0) | (starts + window - hop < num_frames)]


def window_table(videos, window: int, hop: int) -> np.ndarray:
  """[M, 2] int64 rows (video index, start frame) of every window of every video, in order."""
  rows = [np.stack([np.full(len(s), i), s], axis=1)
          for i, v in enumerate(videos) for s in [window_starts(v.num_frames, window, hop)]]
  return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def audio_segment_length(window: int, audio_window: int, min_fps: float) -> int:
  """Samples shipped per window: enough for T frame-centred windows at any frame rate >= min_fps."""
  return audio_window + math.ceil((window - 1) * affwild2.SAMPLE_RATE / min_fps) + 1


def frame_centre_sample(k: np.ndarray, fps: float) -> np.ndarray:
  """Audio sample at the centre of frame k: floor((k + 1/2) * sr / fps)."""
  return np.floor((k + 0.5) * affwild2.SAMPLE_RATE / fps).astype(np.int64)


def read_frames(records: Records, video: VideoIndex, start: int, t: int, context: int = 0):
  """Reads the chunks holding frames [start - context, start + t + context) of `video` (clipped to it).

  Returns (chunks, index of the first chunk in the video, field) where `field(name, fill)` gives the
  per-frame field `name` for frames [start, start + t), with `fill` past the video's last chunk.
  """
  c = records.chunk_size
  first = max(0, start - context) // c
  last = min(video.num_frames - 1, start + t - 1 + context) // c
  chunks = [records.source[video.first_record + j] for j in range(first, last + 1)]
  rows = slice(start - first * c, start - first * c + t)

  def field(name, fill):
    values = np.concatenate([ch[name] for ch in chunks])
    padding = np.full((max(0, rows.stop - len(values)),) + values.shape[1:], fill, values.dtype)
    return np.concatenate([values, padding])[rows]

  return chunks, first, field


def frame_targets(field, video_index: int, start: int) -> dict[str, np.ndarray]:
  """A window's labels and masks (`field` from `read_frames`), and where it sits (video index, start)."""
  mask = field('frame_mask', False)
  return dict(labels=field('labels', 0.0), label_mask=field('label_mask', False) & mask,
              face_mask=field('face_mask', False) & mask, mask=mask, video_index=np.int32(video_index),
              start=np.int32(start))


def cached_features(records: Records, video_index: int, start: int, t: int) -> tuple[dict[str, np.ndarray], object]:
  """(`<part>_features [T, F]` of every part of the feature cache `records` for frames [start, start + t) of a
  video, zeros past its end; the `read_frames` field of those chunks)."""
  _, _, field = read_frames(records, records.videos[video_index], start, t)
  return {f'{part}_features': field(f'{part}_features', 0.0) for part in records.features}, field


@dataclasses.dataclass(frozen=True)
class FeatureWindowLoader:
  """Reads one window of a feature cache: `<part>_features [T, F]` per cached part, masks and labels."""
  records: Records
  window: int

  def __call__(self, row: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    del rng  # cached features are not augmented
    video_index, start = int(row[0]), int(row[1])
    out, field = cached_features(self.records, video_index, start, self.window)
    return dict(out, **frame_targets(field, video_index, start))


@dataclasses.dataclass(frozen=True)
class WindowLoader:
  """Reads one window's chunks and returns the model inputs for it (picklable, for grain workers)."""
  records: Records
  window: int
  image_size: int
  audio_window: int
  min_fps: float
  augment: dict | None = None  # augment_window kwargs, or None (evaluation)
  crop_size: int = 0  # > 0: one crop per window, random (training) or centred (evaluation)
  integer_fps: bool = False  # compat (rnn_attn bug 18): audio centres from the frame rate rounded to an integer

  def __call__(self, row: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    video_index, start = int(row[0]), int(row[1])
    video = self.records.videos[video_index]
    if video.fps < self.min_fps:
      raise ValueError(f'video {video.name} runs at {video.fps:.3f} fps, below config.data.min_fps='
                       f'{self.min_fps}; lower config.data.min_fps to at most {math.floor(video.fps)}')
    t = self.window
    frames = np.arange(start, start + t)
    centres = frame_centre_sample(frames, round(video.fps) if self.integer_fps else video.fps)
    a0, a1 = centres[0] - self.audio_window // 2, centres[-1] + self.audio_window - self.audio_window // 2
    # Also the chunks of the frames whose audio samples [a0, a1) the windows reach.
    reach = np.floor(np.array([a0, a1 - 1]) * video.fps / affwild2.SAMPLE_RATE).astype(int)
    context = max(start - reach[0], reach[1] - (start + t - 1), 0) + 1
    chunks, first, frame_field = read_frames(self.records, video, start, t, context)
    mask = frame_field('frame_mask', False)
    face_mask = frame_field('face_mask', False) & mask
    faces = np.zeros((t, self.image_size, self.image_size, 3), np.uint8)
    for i, jpeg in enumerate(frame_field('faces', b'')):
      if face_mask[i]:
        faces[i] = decode_face(jpeg, self.image_size, video.name, start + i)
    if self.crop_size:
      faces = augment.crop_window(faces, self.crop_size, rng if self.augment is not None else None)
    if self.augment is not None:
      faces = augment.augment_window(faces, rng, **self.augment)

    audio_start = affwild2.frame_boundary_sample(first * self.records.chunk_size, video.fps)
    audio = np.concatenate([ch['audio'] for ch in chunks])
    segment = np.zeros(audio_segment_length(t, self.audio_window, self.min_fps), np.float32)
    lo, hi = max(a0, audio_start), min(a1, audio_start + len(audio))
    segment[lo - a0:hi - a0] = audio[lo - audio_start:hi - audio_start]
    side = cached_features(self.records.side, video_index, start, t)[0] if self.records.side else {}
    return dict(faces=faces, audio=segment, audio_offsets=(centres - centres[0]).astype(np.int32), **side,
                **frame_targets(frame_field, video_index, start))


def decode_face(jpeg: bytes, size: int, video: str, frame: int) -> np.ndarray:
  try:
    image = Image.open(io.BytesIO(jpeg))
    image = image.convert('RGB')
  except Exception as e:  # PIL raises several types for broken data
    raise ValueError(f'corrupt JPEG for video {video} frame {frame + 1:05d} in the records: {e}; fix or '
                     f'delete cropped_aligned/{video}/{frame + 1:05d}.jpg and rebuild the records') from e
  if image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  return np.asarray(image, np.uint8)


@dataclasses.dataclass(frozen=True)
class EvalWindow:
  """Loads a row (video index, start, valid) of the padded evaluation table."""
  loader: WindowLoader

  def __call__(self, row: np.ndarray) -> dict[str, np.ndarray]:
    return dict(self.loader(row[:2]), valid_window=np.bool_(row[2]))


def _loader(records: Records, config, *, augmented: bool, window: int) -> WindowLoader | FeatureWindowLoader:
  data = config.data
  if records.features:
    return FeatureWindowLoader(records=records, window=window)
  return WindowLoader(records=records, window=window, image_size=data.image_size,
                      audio_window=data.audio_window, min_fps=data.min_fps,
                      augment=data.augment.to_dict() if augmented else None, crop_size=data.crop_size,
                      integer_fps=config.compat.integer_fps)


def _view(records: Records, config, *, train: bool):
  """(window table, window loader) of `config.data.view`: 'frames' (windows of T frames, the default),
  'clips' (RJCA windows of `data.num_clips` clips, `affjax.data.clips`) or 'tokens' (windows of T tokens at
  `model.token_rate_hz`, `affjax.data.tokens`); training windows of kept frames only with
  `config.compat.compact_frames` (`affjax.data.compact`)."""
  view = config.data.view
  if records.features and records.view != view:
    raise ValueError(f'config.data.view={view!r}, but the feature cache {records.directory} holds features of the '
                     f'{records.view!r} view: build one with tools/cache_features.py and this config')
  hop = config.data.train_hop if train else config.data.eval_hop
  if view == 'clips':
    from affjax.data import clips  # pylint: disable=g-import-not-at-top  (clips builds on this module)
    return clips.window_table(records.videos, config.data.num_clips), clips.loader(records, config, train=train)
  if view == 'tokens':
    from affjax.data import tokens  # pylint: disable=g-import-not-at-top  (tokens builds on this module)
    table = tokens.window_table(records.videos, config.data.window, hop, config.model.token_rate_hz)
    return table, tokens.loader(records, config, train=train)
  if view != 'frames':
    raise ValueError(f"config.data.view={view!r} is not one of ['frames', 'clips', 'tokens']")
  if train and config.compat.compact_frames:
    from affjax.data import compact  # pylint: disable=g-import-not-at-top  (compact builds on this module)
    return compact.view(records, config, _loader(records, config, augmented=False, window=1))
  return (window_table(records.videos, config.data.window, hop),
          _loader(records, config, augmented=train, window=config.data.window))


def _iterate(ds: grain.MapDataset, config) -> grain.IterDataset:
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  if config.data.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.num_workers, per_worker_buffer_size=config.data.worker_buffer_size))
  return it


def per_process_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f'config batch size {global_batch_size} is not divisible by the '
                     f'{jax.process_count()} processes')
  return global_batch_size // jax.process_count()


class ProcessRows(grain.MapDataset):
  """This process's rows of every global batch of `parent`: with P processes and L rows each, rows
  [p L, (p + 1) L) of each run of P L elements. The global batch (every process's rows, in process order, as
  `parallel.to_global` places them) is then the same run of elements on any number of processes."""

  def __init__(self, parent: grain.MapDataset, rows_per_process: int):
    super().__init__(parent)
    self._rows, self._process, self._processes = rows_per_process, jax.process_index(), jax.process_count()

  def __len__(self) -> int:
    return len(self._parent) // (self._rows * self._processes) * self._rows

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._rows)
    return self._parent[(batch * self._processes + self._process) * self._rows + row]

  def __str__(self) -> str:
    return f'ProcessRows(rows_per_process={self._rows}, process={self._process} of {self._processes})'


def train_dataset(records: Records, config) -> grain.IterDataset:
  """Endless, globally shuffled (reshuffled every epoch) training batches of this process's share.

  Augmentation is drawn per element from its index in the global stream (step x global batch + row), so a
  window gets the same crop, jitter and flip on any number of processes."""
  table, loader = _view(records, config, train=True)
  if len(table) == 0:
    raise ValueError(f'the {records.split} split of {records.directory} holds no video')
  ds = grain.MapDataset.source(table).shuffle(seed=config.seed).repeat()
  ds = ds.random_map(loader, seed=config.seed)
  local_batch = per_process_batch_size(config.train.batch_size)
  ds = ProcessRows(ds, local_batch).batch(local_batch, drop_remainder=True)
  return _iterate(ds, config)


def eval_dataset(records: Records, config) -> tuple[grain.IterDataset, int]:
  """Every window of every video in order (hop `data.eval_hop`, or every clip window), this process's rows of
  each global batch.

  The table is padded with copies of its last window (flagged by `valid_window` False) to whole global
  batches. Returns the dataset and the number of real windows.
  """
  table, loader = _view(records, config, train=False)
  global_batch = config.eval.batch_size
  num_windows = len(table)
  padded = -(-num_windows // global_batch) * global_batch
  rows = np.concatenate([np.arange(num_windows), np.full(padded - num_windows, num_windows - 1)])
  valid = np.arange(padded) < num_windows
  local_batch = per_process_batch_size(global_batch)
  ds = grain.MapDataset.source(np.concatenate([table[rows], valid[:, None]], axis=1))
  ds = ProcessRows(ds, local_batch).map(EvalWindow(loader)).batch(local_batch, drop_remainder=False)
  return _iterate(ds, config), num_windows
