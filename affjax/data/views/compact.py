"""Compacted training windows (compat `compact_frames`, rnn_attn bug 15).

The Karas et al. reference removes the unannotated (-5) rows and the frames without a face crop before it
cuts windows, so a training window holds the next T kept frames of a video and jumps over gaps. affjax keeps
the timeline and masks by default; this reproduces the reference's training windows (evaluation keeps the
ABAW protocol over the whole timeline). Each kept frame keeps its own audio window, centred on its time.

A window is (video index, position): the kept frames `kept[video][position:position + T]`, a tail window
padded with masked frames. Every frame is read on its own by the frame loader (window 1), and the window's
augmentation is drawn once for all of its frames.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from affjax.data import augment, records as records_lib
from affjax.data.views import base


def kept_frames(records: records_lib.Records) -> tuple[np.ndarray, ...]:
  """Per video of `records`, the frame ids `[K]` with a valid label and a face crop."""
  kept = []
  for video in records.videos:
    chunks = [records.source[video.first_record + j] for j in range(video.num_chunks)]
    keep = np.concatenate([c['frame_mask'] & c['label_mask'] & c['face_mask'] for c in chunks])
    kept.append(np.flatnonzero(keep))
  return tuple(kept)


def window_table(kept: tuple[np.ndarray, ...], window: int, hop: int) -> np.ndarray:
  """`[M, 2]` rows (video index, position in its kept frames) of the windows of `window` kept frames at `hop`
  covering every kept frame (the last one padded)."""
  rows = [np.stack([np.full(len(s), i), s], axis=1)
          for i, k in enumerate(kept) if len(k) for s in [base.window_starts(len(k), window, hop)]]
  return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


@dataclasses.dataclass(frozen=True)
class CompactWindowLoader:
  """One compacted window: the outputs of `frame_loader` (a loader of 1-frame windows, no augmentation) for each
  of its frames, stacked; the audio segments concatenated, each frame's `audio_offsets` pointing into its own."""
  frame_loader: base.Loader  # of 1-frame windows (`frames.loader`): `records` and the window's arrays
  kept: tuple[np.ndarray, ...]
  window: int
  augment: dict | None = None  # augment.augment_window kwargs, drawn once per window

  def __call__(self, row: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    video_index, position = int(row[0]), int(row[1])
    frames = self.kept[video_index][position:position + self.window]
    past_end = self.frame_loader.records.videos[video_index].num_frames  # a padding frame, masked
    frames = np.concatenate([frames, np.full(self.window - len(frames), past_end)])
    parts = [self.frame_loader(np.array([video_index, f])) for f in frames]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if np.ndim(parts[0][k])}
    if 'audio' in out:
      out['audio_offsets'] += (np.arange(self.window) * len(parts[0]['audio'])).astype(np.int32)
    if self.augment is not None and 'faces' in out:
      out['faces'] = augment.augment_window(out['faces'], rng, **self.augment)
    return dict(out, video_index=parts[0]['video_index'], start=np.int32(frames[0]))


def validate(config) -> None:
  """The compacted windows take no crop."""
  if config.compat.compact_frames:
    base.require(not config.data.crop_size, 'data.crop_size', config.data.crop_size,
                 'config.compat.compact_frames reproduces the Karas et al. windows, which take no crop: set '
                 'config.data.crop_size=0 or the compat flag to False')


def windows(records: records_lib.Records, config, frame_loader) -> tuple[np.ndarray, CompactWindowLoader]:
  """(window table, loader) of the compacted training windows of `records` for `config`, reading frames with
  `frame_loader` (1-frame windows, not augmented)."""
  kept = kept_frames(records)
  augmentation = None if records.features else config.data.augment.to_dict()
  loader = CompactWindowLoader(frame_loader=frame_loader, kept=kept, window=config.data.window, augment=augmentation)
  return window_table(kept, config.data.window, config.data.train_hop), loader
