"""Per-frame predictions of a video: the window predictions a view places on frames, averaged over the windows
that cover each frame, optionally smoothed."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from affjax.data import records as records_lib


@dataclasses.dataclass
class VideoPredictions:
  """Per-frame predictions of one video, averaged over the windows that cover each frame."""
  name: str
  num_rows: int  # rows of the ABAW file: the annotation file's rows, or every frame for test videos
  sums: np.ndarray  # [N,2]
  counts: np.ndarray  # [N]
  labels: np.ndarray  # [N,2]
  label_mask: np.ndarray  # [N]
  face_mask: np.ndarray | None = None  # [N] the frame's prediction saw a face; runs of these are smoothed
  smooth: tuple[int, int] = (0, 0)  # moving-average sizes (valence, arousal); <= 1: none

  @classmethod
  def empty(cls, video: records_lib.VideoIndex) -> 'VideoPredictions':
    n = video.num_frames
    return cls(name=video.name, num_rows=video.num_rows, sums=np.zeros((n, 2)), counts=np.zeros(n),
               labels=np.zeros((n, 2), np.float32), label_mask=np.zeros(n, bool), face_mask=np.ones(n, bool))

  def add(self, start: int, pred: np.ndarray, labels: np.ndarray, label_mask: np.ndarray, mask: np.ndarray,
          frames: np.ndarray | None = None, face_mask: np.ndarray | None = None):
    """Adds one window's [T,2] predictions at frames [start, start + T) (or at `frames` [T], e.g. the last
    frames of a window's clips) where `mask` (not padding); `face_mask` [T] marks predictions that saw a face."""
    frames = (np.arange(start, start + len(mask)) if frames is None else np.asarray(frames))[mask]
    self.sums[frames] += pred[mask]
    self.counts[frames] += 1
    self.labels[frames] = labels[mask]
    self.label_mask[frames] = label_mask[mask]
    if face_mask is not None:
      self.face_mask[frames] = face_mask[mask]

  @property
  def prediction(self) -> np.ndarray:
    if not self.counts.all():
      raise RuntimeError(f'video {self.name}: frames {np.flatnonzero(self.counts == 0)[:5]}... got no prediction')
    pred = self.sums / self.counts[:, None]
    if max(self.smooth) > 1:
      runs = np.ones(len(pred), bool) if self.face_mask is None else self.face_mask
      pred = np.stack([moving_average(pred[:, d], size, runs) for d, size in enumerate(self.smooth)], axis=-1)
    return pred


def moving_average(x: np.ndarray, size: int, valid: np.ndarray) -> np.ndarray:
  """Centred moving average of `x` [N] over frames i - size // 2 ... i + (size - 1) // 2 (scipy's
  uniform_filter1d window), normalised by the number of those frames that lie in i's run of consecutive
  `valid` frames: it never reaches across an invalid frame or the ends and never counts zeros for them.
  Invalid frames keep their value; `size` <= 1 returns `x`."""
  out = np.array(x, np.float64)
  if size <= 1:
    return out
  edges = np.flatnonzero(np.diff(np.r_[0, valid.astype(np.int8), 0]))
  for start, stop in zip(edges[::2], edges[1::2]):
    sums = np.r_[0.0, np.cumsum(out[start:stop])]
    i = np.arange(stop - start)
    lo, hi = np.maximum(i - size // 2, 0), np.minimum(i + (size - 1) // 2 + 1, stop - start)
    out[start:stop] = (sums[hi] - sums[lo]) / (hi - lo)
  return out


def from_frame_prediction(records: records_lib.Records, video: records_lib.VideoIndex,
                          pred: np.ndarray) -> VideoPredictions:
  """A video's predictions of every frame `[N, 2]` with its labels and masks read from `records`."""
  out = VideoPredictions.empty(video)
  _, _, field = records_lib.read_frames(records, video, 0, video.num_frames)
  t = records_lib.frame_targets(field, 0, 0)
  out.add(0, pred, t['labels'], t['label_mask'], t['mask'], face_mask=t['face_mask'])
  return out


@dataclasses.dataclass
class OnFrames:
  """A split's predictions for views whose window position t predicts frame `window_frames(window)[t]`
  (a `base.SplitPredictions`); labels and masks come with the windows."""
  window_frames: Callable[[Mapping[str, np.ndarray]], np.ndarray]
  per_video: list[VideoPredictions]

  @classmethod
  def of(cls, records: records_lib.Records,
         window_frames: Callable[[Mapping[str, np.ndarray]], np.ndarray]) -> 'OnFrames':
    return cls(window_frames=window_frames, per_video=[VideoPredictions.empty(v) for v in records.videos])

  def add(self, window: Mapping[str, np.ndarray], pred: np.ndarray) -> None:
    self.per_video[window['video_index']].add(0, pred, window['labels'], window['label_mask'], window['mask'],
                                               self.window_frames(window), window.get('face_mask'))

  def videos(self) -> list[VideoPredictions]:
    return self.per_video
