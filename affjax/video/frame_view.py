"""The frame view (`config.data.view = 'frames'`) of a decoded video: windows of T frames at the evaluation hop,
each frame's face crop and the audio window centred on it, exactly as `pipeline.WindowLoader` builds them
from records, predicted in batches and averaged per frame by `evaluate.VideoPredictions` (and smoothed by
`config.eval.smooth`)."""
from __future__ import annotations

import dataclasses

import numpy as np

from affjax import evaluate
from affjax.data import affwild2, augment, pipeline


@dataclasses.dataclass
class DecodedVideo:
  """What the views take from a video: per decoded frame its face crop and time, and the audio."""
  name: str
  faces: np.ndarray  # [N, S, S, 3] uint8 crops at config.data.image_size (zeros where no face)
  face_mask: np.ndarray  # [N] bool
  times: np.ndarray  # [N] float64 seconds from the first frame
  audio: np.ndarray  # [A] float32 mono at affwild2.SAMPLE_RATE, sample 0 at time 0 (zeros for visual-only runs)

  @property
  def num_frames(self) -> int:
    return len(self.times)

  @property
  def fps(self) -> float:
    return float((len(self.times) - 1) / self.times[-1]) if len(self.times) > 1 and self.times[-1] > 0 else 25.0


def frame_centre_samples(times: np.ndarray) -> np.ndarray:
  """Audio sample at the centre of each frame [N]: its timestamp plus half the time to the next frame (the
  last frame lasts as long as the one before it); `pipeline.frame_centre_sample` for a constant rate."""
  durations = np.diff(times, append=times[-1] + (times[-1] - times[-2] if len(times) > 1 else 0.04))
  return np.floor((times + durations / 2) * affwild2.SAMPLE_RATE + 1e-6).astype(np.int64)


def window(video: DecodedVideo, start: int, config, centres: np.ndarray) -> dict[str, np.ndarray]:
  """The model inputs of frames [start, start + T) (past the end: padding, mask False)."""
  data, t = config.data, config.data.window
  frames = np.arange(start, start + t)
  mask = frames < video.num_frames
  frames = np.minimum(frames, video.num_frames - 1)
  face_mask = video.face_mask[frames] & mask
  faces = np.where(face_mask[:, None, None, None], video.faces[frames], 0).astype(np.uint8)
  if data.get('crop_size', 0):
    faces = augment.crop_window(faces, data.crop_size)
  length = pipeline.audio_segment_length(t, data.audio_window, data.min_fps)
  c = centres[frames]
  offsets = np.minimum(c - c[0], length - data.audio_window)  # a frame gap longer than min_fps allows
  a0 = int(c[0]) - data.audio_window // 2
  segment = np.zeros(length, np.float32)
  lo, hi = max(a0, 0), min(a0 + length, len(video.audio))
  if hi > lo:
    segment[lo - a0:hi - a0] = video.audio[lo:hi]
  return dict(faces=faces, audio=segment, audio_offsets=offsets.astype(np.int32), mask=mask, face_mask=face_mask)


def predict(video: DecodedVideo, run) -> np.ndarray:
  """`[N, 2]` per-frame (valence, arousal) of `video` by `run` (`affjax.video.run.LoadedRun`)."""
  config = run.config
  t, batch_size = config.data.window, config.eval.batch_size
  n = video.num_frames
  index = pipeline.VideoIndex(name=video.name, num_frames=n, fps=video.fps, first_record=0, num_chunks=0,
                              num_rows=n)
  out = dataclasses.replace(evaluate.VideoPredictions.empty(index), smooth=tuple(config.eval.get('smooth', (0, 0))))
  centres = frame_centre_samples(video.times)
  starts = pipeline.window_starts(n, t, config.data.eval_hop)
  for b in range(0, len(starts), batch_size):
    chunk = starts[b:b + batch_size]
    windows = [window(video, int(s), config, centres) for s in chunk]
    windows += windows[-1:] * (batch_size - len(windows))  # whole batches: one compiled shape
    pred = run.predict({k: np.stack([w[k] for w in windows]) for k in windows[0]})
    for s, w, p in zip(chunk, windows, pred):
      out.add(int(s), p, np.zeros((t, 2), np.float32), np.zeros(t, bool), w['mask'], face_mask=w['face_mask'])
  return out.prediction
