"""TFDS builder `affwild2_features`: per-frame embeddings of frozen backbones, chunked like the frame records.

Record i of a split holds the embeddings `<part>_features [C, *shape_part]` (float32) of the frames of
record i of the frame records it was computed from, with the same masks, labels and metadata (video index),
so `pipeline.open_records` reads it unchanged and the same window tables address it. What "the embedding of
a frame" is depends on the view (metadata `view`): 'frames', the backbone output for that frame; 'clips'
(RJCA), the output for the clip that ends at that frame (every frame ends exactly one clip), with
`face_mask` = the clip has a face crop. Training the fusion model from it (`config.data.features_dir`)
skips the backbones: no backbone compute per step (and, for the frame view, a record set a few hundred
times smaller than the JPEGs and audio); inputs are not augmented.
"""
from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from affjax.data import builder, pipeline

# (batch of chunk inputs) -> {part: [B, C, *shape_part]} embeddings
Extractor = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
# row (video index, start frame) of a chunk -> the backbones' inputs for its C frames and their per-frame
# face_mask, mask, label_mask and labels [C, ...]
ChunkLoader = Callable[[np.ndarray], dict[str, np.ndarray]]


class Affwild2Features(tfds.core.GeneratorBasedBuilder):
  """Per-frame backbone embeddings of an `affwild2` record set (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, source: str, shapes: Mapping[str, tuple[int, ...]], view: str,
               make_loader: Callable[[pipeline.Records], ChunkLoader], extract: Extractor, batch_chunks: int = 8,
               **kwargs):
    self._source, self._shapes, self._view = source, {p: tuple(s) for p, s in shapes.items()}, view
    self._make_loader, self._extract, self._batch_chunks = make_loader, extract, batch_chunks
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
                              features={p: list(s) for p, s in self._shapes.items()}, view=self._view)
    return {split: self._generate_examples(split) for split in builder.SPLITS}

  def _generate_examples(self, split: str):
    records = pipeline.open_records(self._source, split)
    loader = self._make_loader(records)
    rows = [(i, j * records.chunk_size) for i, v in enumerate(records.videos) for j in range(v.num_chunks)]
    for first in tqdm.trange(0, len(rows), self._batch_chunks, desc=f'features {split}', unit='batch'):
      windows = [loader(np.asarray(row)) for row in rows[first:first + self._batch_chunks]]
      batch = {k: np.stack([w[k] for w in windows]) for k in windows[0]}
      feats = {part: np.asarray(f, np.float32) for part, f in self._extract(batch).items()}
      for n, (i, start) in enumerate(rows[first:first + self._batch_chunks]):
        video = records.videos[i]
        example = dict(video=video.name, start=start, fps=video.fps, face_mask=batch['face_mask'][n],
                       frame_mask=batch['mask'][n], label_mask=batch['label_mask'][n], labels=batch['labels'][n])
        example.update({f'{part}_features': f[n] for part, f in feats.items()})
        yield f'{first + n:010d}', example
    logging.info('affwild2_features %s: %d chunks', split, len(rows))


def dataset_dir(features_dir) -> pathlib.Path:
  """Where `build` writes the features (the directory `config.data.features_dir` names)."""
  return pathlib.Path(features_dir).expanduser() / 'affwild2_features' / str(Affwild2Features.VERSION)


def build(source: str, features_dir, *, shapes: Mapping[str, tuple[int, ...]], view: str,
          make_loader: Callable[[pipeline.Records], ChunkLoader], extract: Extractor,
          batch_chunks: int = 8) -> pathlib.Path:
  """Computes the features (`shapes`: part -> per-frame shape) of every chunk of every split of the records at
  `source` once (a rerun over complete shards does nothing); returns the dataset directory."""
  features = Affwild2Features(source=source, shapes=shapes, view=view, make_loader=make_loader, extract=extract,
                              batch_chunks=batch_chunks, data_dir=str(pathlib.Path(features_dir).expanduser()),
                              file_format='array_record')
  features.download_and_prepare()
  return dataset_dir(features_dir)
