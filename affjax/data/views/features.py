"""Feature caches as window inputs (`affjax.data.feature_cache` writes them): the per-frame features of frozen
backbones in place of faces and audio, cut into windows by the tables of the view the cache was built for
(its metadata `view`: 'frames', or 'clips': the features of the clip that ends at a frame). The frame and clip
views read caches with these; the frame view also joins a cache to its windows (LFAN's VGGish features).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from affjax.data import records as records_lib


def cached_features(records: records_lib.Records, video_index: int, start: int,
                    t: int) -> tuple[dict[str, np.ndarray], object]:
  """(`<part>_features [T, F]` of every part of the feature cache `records` for frames [start, start + t) of a
  video, zeros past its end; the `read_frames` field of those chunks)."""
  _, _, field = records_lib.read_frames(records, records.videos[video_index], start, t)
  return {f'{part}_features': field(f'{part}_features', 0.0) for part in records.features}, field


@dataclasses.dataclass(frozen=True)
class FeatureWindowLoader:
  """Reads one window of a feature cache: `<part>_features [T, F]` per cached part, masks and labels."""
  records: records_lib.Records
  window: int

  def __call__(self, row: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    del rng  # cached features are not augmented
    video_index, start = int(row[0]), int(row[1])
    out, field = cached_features(self.records, video_index, start, self.window)
    return dict(out, **records_lib.frame_targets(field, video_index, start))


def check_view(records: records_lib.Records, view: str) -> None:
  """Raises ValueError if `records` is a feature cache built for another view than `view` (`config.data.view`)."""
  if records.features and records.view != view:
    raise ValueError(f'config.data.view={view!r}, but the feature cache {records.directory} holds features of the '
                     f'{records.view!r} view: build one with tools/cache_features.py and this config')


def feature_zeros(directory: str, batch_size: int, t: int) -> dict[str, np.ndarray]:
  """Zeros shaped like the `<part>_features [B, t, ...]` of a batch of the feature cache at `directory`."""
  shapes = records_lib.open_records(directory, 'train').features
  return {f'{part}_features': np.zeros((batch_size, t, *shape), np.float32) for part, shape in shapes.items()}


def example_batch(directory: str, batch_size: int, t: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a batch of windows of `t` steps read from the feature cache at `directory` alone."""
  return dict(feature_zeros(directory, batch_size, t), mask=np.ones((batch_size, t), bool))
