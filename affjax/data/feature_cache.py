"""TFDS builder `affwild2_features`: per-frame features (embeddings of frozen backbones, LFAN's VGGish), chunked
like the frame records.

Record i of a split holds the features `<part>_features [C, *shape_part]` (float32) of the frames of record i of
the frame records it was computed from, with the same masks, labels and metadata (video index), so
`affjax.data.records.open_records` reads it unchanged and the same window tables address it. A run trains either from it
alone (`config.data.features_dir`: no backbone compute per step; inputs are not augmented) or from the frame
records with it joined to every window (`config.data.side_features_dir`).

What "the features of a frame" are depends on the view (metadata `view`): 'frames', the backbone output for that
frame; 'clips' (RJCA), the output for the clip that ends at that frame (every frame ends exactly one clip), with
`face_mask` = the clip has a face crop. What fills the cache is a `ChunkFeatures` function: `window_features`
runs a batched extractor over the chunks' backbone inputs, `video_features` a per-video function of the whole
waveform.
"""
from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from affjax.data import builder, records as records_lib

# (records of one split) -> per chunk, in record order, the example fields it sets: `<part>_features
# [C, *shape_part]`, and `face_mask [C]` where it differs from the frame record's (the clip view)
ChunkFeatures = Callable[[records_lib.Records], Iterator[Mapping[str, np.ndarray]]]
# (batch of chunk inputs) -> {part: [B, C, *shape_part]}
Extractor = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
# row (video index, start frame) of a chunk -> the backbones' inputs for its C frames and their face_mask [C]
ChunkLoader = Callable[[np.ndarray], dict[str, np.ndarray]]
# (16 kHz waveform [L] of a whole video, fps, frames N) -> {part: [N, F_part]}
VideoExtractor = Callable[[np.ndarray, float, int], Mapping[str, np.ndarray]]


def window_features(extract: Extractor, make_loader: Callable[[records_lib.Records], ChunkLoader],
                    batch_chunks: int = 8) -> ChunkFeatures:
  """Runs `extract` over batches of `batch_chunks` chunks' inputs (`make_loader(records)`)."""

  def features(records: records_lib.Records) -> Iterator[Mapping[str, np.ndarray]]:
    loader = make_loader(records)
    rows = [(i, j * records.chunk_size) for i, v in enumerate(records.videos) for j in range(v.num_chunks)]
    for first in range(0, len(rows), batch_chunks):
      windows = [loader(np.asarray(row)) for row in rows[first:first + batch_chunks]]
      batch = {k: np.stack([w[k] for w in windows]) for k in windows[0]}
      feats = extract(batch)
      for n in range(len(windows)):
        yield dict({f'{part}_features': f[n] for part, f in feats.items()}, face_mask=batch['face_mask'][n])

  return features


def video_features(extract: VideoExtractor) -> ChunkFeatures:
  """Runs `extract` on each video's whole waveform (its chunks' audio, concatenated) and cuts the result into
  chunks (zeros past the video's last frame)."""

  def features(records: records_lib.Records) -> Iterator[Mapping[str, np.ndarray]]:
    c = records.chunk_size
    for video in records.videos:
      wave = np.concatenate([records.source[video.first_record + j]['audio'] for j in range(video.num_chunks)])
      feats = {part: np.asarray(f, np.float32) for part, f in extract(wave, video.fps, video.num_frames).items()}
      for j in range(video.num_chunks):
        chunk = {}
        for part, f in feats.items():
          chunk[f'{part}_features'] = np.zeros((c,) + f.shape[1:], np.float32)
          rows = f[j * c:(j + 1) * c]
          chunk[f'{part}_features'][:len(rows)] = rows
        yield chunk

  return features


class Affwild2Features(tfds.core.GeneratorBasedBuilder):
  """Per-frame features of an `affwild2` record set (see the module docstring)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.1.0': 'the source records\' fingerprint of the tree; splits without videos have no shard'}

  def __init__(self, *, source: str, shapes: Mapping[str, tuple[int, ...]], view: str = 'frames',
               features: ChunkFeatures | None = None, **kwargs):
    self._source, self._shapes, self._view = source, {p: tuple(s) for p, s in shapes.items()}, view
    self._features = features
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = int(tfds.builder_from_directory(self._source).info.metadata['chunk_size'])
    features = {
        'video': tfds.features.Tensor(shape=(), dtype=np.str_),
        'start': tfds.features.Scalar(dtype=np.int64),
        'fps': tfds.features.Scalar(dtype=np.float64),
        'face_mask': tfds.features.Tensor(shape=(c,), dtype=np.bool_),
        'frame_mask': tfds.features.Tensor(shape=(c,), dtype=np.bool_),
        'label_mask': tfds.features.Tensor(shape=(c,), dtype=np.bool_),
        'labels': tfds.features.Tensor(shape=(c, 2), dtype=np.float32),
    }
    for part, shape in self._shapes.items():
      features[f'{part}_features'] = tfds.features.Tensor(shape=(c, *shape), dtype=np.float32)
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    source = tfds.builder_from_directory(self._source).info.metadata
    self.info.metadata.update(chunk_size=source['chunk_size'], videos=source['videos'], source=str(self._source),
                              features={p: list(s) for p, s in self._shapes.items()}, view=self._view,
                              fingerprint=source['fingerprint'])
    return {split: self._generate_examples(split) for split in builder.SPLITS if source['videos'][split]}

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    super()._download_and_prepare(dl_manager, download_config)
    builder.record_shard_sizes(self.info)

  def _generate_examples(self, split: str):
    if self._features is None:
      raise ValueError(f'{self.data_dir} is incomplete and no feature function was given to build it')
    records = records_lib.open_records(self._source, split)
    chunks = len(records.source)
    for i, fields in enumerate(tqdm.tqdm(self._features(records), total=chunks, desc=f'features {split}',
                                         unit='chunk')):
      chunk = records.source[i]
      example = {k: chunk[k] for k in ('video', 'start', 'fps', 'face_mask', 'frame_mask', 'label_mask', 'labels')}
      example.update({k: np.asarray(v, np.float32 if k.endswith('_features') else np.bool_)
                      for k, v in fields.items()})
      yield f'{i:010d}', example
    logging.info('affwild2_features %s: %d chunks', split, chunks)


def dataset_dir(features_dir) -> pathlib.Path:
  """Where `build` writes the features (the directory `config.data.features_dir` names)."""
  return pathlib.Path(features_dir).expanduser() / 'affwild2_features' / str(Affwild2Features.VERSION)


def build(source: str, features_dir, *, shapes: Mapping[str, tuple[int, ...]], features: ChunkFeatures,
          view: str = 'frames') -> pathlib.Path:
  """Computes the features (`shapes`: part -> per-frame shape) of every chunk of every split of the records at
  `source` once (a rerun over complete shards does nothing); returns the dataset directory."""
  cache = Affwild2Features(source=source, shapes=shapes, view=view, features=features,
                           data_dir=str(pathlib.Path(features_dir).expanduser()), file_format='array_record')
  cache.download_and_prepare()
  return dataset_dir(features_dir)
