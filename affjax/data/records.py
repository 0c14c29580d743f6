"""Reading the chunk records (`affjax.data.builder`): a partition's data source and per-video index, shard checks
whose errors name the shard and the fix, and the per-frame fields and face JPEGs of a span of a video that
every view (`affjax.data.views`) cuts its windows from."""
from __future__ import annotations

import dataclasses
import functools
import io
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from affjax.data import builder, folds, names


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

  With `fold` in [0, 6) (LFAN's cross-validation, `affjax.data.folds.fold_split`), 'train' and 'validation' are that
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

