"""The frame view (the default): windows of T consecutive frames of a video, every frame with its face and its
own centred audio window.

A window is (video, start): frames [start, start + T) of one video (frames past the video's end are
padding, mask False), with one contiguous 16 kHz audio segment from which each frame's audio window
(`audio_window` samples centred on the frame) is sliced on device at `audio_offsets[t]`. Audio outside
the video is zeros, so every frame's window is exactly centred. From a feature cache of this view a window holds
its frames' features instead (`features`); with `compat.compact_frames` the training windows jump over the
frames without a label or a face (`compact`).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from affjax.data import affwild2, augment, records as records_lib
from affjax.data.views import base, compact, features, predictions

NAME = 'frames'


def window_table(videos, window: int, hop: int) -> np.ndarray:
  """[M, 2] int64 rows (video index, start frame) of every window of every video, in order."""
  rows = [np.stack([np.full(len(s), i), s], axis=1)
          for i, v in enumerate(videos) for s in [base.window_starts(v.num_frames, window, hop)]]
  return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def audio_segment_length(window: int, audio_window: int, min_fps: float) -> int:
  """Samples shipped per window: enough for T frame-centred windows at any frame rate >= min_fps."""
  return audio_window + math.ceil((window - 1) * affwild2.SAMPLE_RATE / min_fps) + 1


def frame_centre_sample(k: np.ndarray, fps: float) -> np.ndarray:
  """Audio sample at the centre of frame k: floor((k + 1/2) * sr / fps)."""
  return np.floor((k + 0.5) * affwild2.SAMPLE_RATE / fps).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class WindowLoader:
  """Reads one window's chunks and returns the model inputs for it (picklable, for grain workers)."""
  records: records_lib.Records
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
    chunks, first, frame_field = records_lib.read_frames(self.records, video, start, t, context)
    mask = frame_field('frame_mask', False)
    face_mask = frame_field('face_mask', False) & mask
    faces = np.zeros((t, self.image_size, self.image_size, 3), np.uint8)
    for i, jpeg in enumerate(frame_field('faces', b'')):
      if face_mask[i]:
        faces[i] = records_lib.decode_face(jpeg, self.image_size, video.name, start + i)
    if self.crop_size:
      faces = augment.crop_window(faces, self.crop_size, rng if self.augment is not None else None)
    if self.augment is not None:
      faces = augment.augment_window(faces, rng, **self.augment)

    audio_start = affwild2.frame_boundary_sample(first * self.records.chunk_size, video.fps)
    audio = np.concatenate([ch['audio'] for ch in chunks])
    segment = np.zeros(audio_segment_length(t, self.audio_window, self.min_fps), np.float32)
    lo, hi = max(a0, audio_start), min(a1, audio_start + len(audio))
    segment[lo - a0:hi - a0] = audio[lo - audio_start:hi - audio_start]
    side = features.cached_features(self.records.side, video_index, start, t)[0] if self.records.side else {}
    return dict(faces=faces, audio=segment, audio_offsets=(centres - centres[0]).astype(np.int32), **side,
                **records_lib.frame_targets(frame_field, video_index, start))


def loader(records: records_lib.Records, config, *, augmented: bool,
           window: int) -> WindowLoader | features.FeatureWindowLoader:
  """The loader of windows of `window` frames of `records`: the frame records' faces and audio, or a feature
  cache's features."""
  data = config.data
  if records.features:
    return features.FeatureWindowLoader(records=records, window=window)
  return WindowLoader(records=records, window=window, image_size=data.image_size,
                      audio_window=data.audio_window, min_fps=data.min_fps,
                      augment=data.augment.to_dict() if augmented else None, crop_size=data.crop_size,
                      integer_fps=config.compat.integer_fps)


def windows(records: records_lib.Records, config, *, train: bool) -> tuple[np.ndarray, base.Loader]:
  """Windows of `data.window` frames at `data.train_hop` / `data.eval_hop`; the training windows of kept frames
  only with `config.compat.compact_frames`."""
  features.check_view(records, NAME)
  if train and config.compat.compact_frames:
    return compact.windows(records, config, loader(records, config, augmented=False, window=1))
  hop = config.data.train_hop if train else config.data.eval_hop
  return (window_table(records.videos, config.data.window, hop),
          loader(records, config, augmented=train, window=config.data.window))


def example_batch(config, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a frame-view batch of `batch_size` windows; from a feature cache (`data.features_dir`)
  its `<part>_features` instead of faces and audio. The features a cache joined to the frames adds
  (`data.side_features_dir`) are the system's to declare (`train.state.example_batch`)."""
  d, t = config.data, config.data.window
  if d.features_dir:
    return features.example_batch(d.features_dir, batch_size, t)
  s = d.crop_size or d.image_size
  return dict(faces=np.zeros((batch_size, t, s, s, 3), np.uint8),
              audio=np.zeros((batch_size, audio_segment_length(t, d.audio_window, d.min_fps)), np.float32),
              audio_offsets=np.zeros((batch_size, t), np.int32), mask=np.ones((batch_size, t), bool))


def validate(config) -> None:
  """The checks of the frame view: those of its compacted training windows."""
  compact.validate(config)


def window_frames(window) -> np.ndarray:
  """The frames `[T]` a window's positions predict: start, start + 1, ..."""
  return window['start'] + np.arange(len(window['mask']))


def chunk_loader(records: records_lib.Records, config) -> WindowLoader:
  """The loader of one chunk's faces and audio (a window of the chunk's frames, not augmented)."""
  data = config.data
  return WindowLoader(records=records, window=records.chunk_size, image_size=data.image_size,
                      audio_window=data.audio_window, min_fps=data.min_fps,
                      integer_fps=config.compat.integer_fps)


VIEW = base.View(name=NAME, windows=windows, example_batch=example_batch,
                 predictions=lambda records, config: predictions.OnFrames.of(records, window_frames),
                 validate=validate, chunk_loader=chunk_loader,
                 backbone_inputs=('faces', 'audio', 'audio_offsets', 'mask'))
