"""A decoded video predicted through the run's own view (frames, clips or tokens): the video becomes one video
of in-memory records, chunks as `affjax.data.builder` writes them (face JPEGs, masks, 16 kHz audio), so the
view's window loader and `evaluate.predict_split` (windows, batches, prediction-to-frame mapping, smoothing)
run on it unchanged, faceless frames included. A run whose windows join a feature cache to the frames (LFAN's
VGGish follower) gets the features of the video's audio computed as its cache was, joined the same way.

The views place frame k's audio at the constant rate fps (`affwild2.frame_boundary_sample`); a video of
variable frame rate has its audio warped onto that timeline, frame by frame from its timestamps (for a
constant rate the warp is the identity).
"""
from __future__ import annotations

import collections
import dataclasses
import time

import jax
import numpy as np

from affjax import evaluate
from affjax.data import affwild2, feature_cache, records as records_lib

CHUNK_SIZE = 32


@dataclasses.dataclass
class DecodedVideo:
  """What the views take from a video: per decoded frame its face crop (JPEG) and time, and the audio."""
  name: str
  faces: list[bytes]  # [N] 112x112 aligned crops as JPEG, b'' where no face
  face_mask: np.ndarray  # [N] bool
  times: np.ndarray  # [N] float64 seconds from the first frame
  audio: np.ndarray  # [A] float32 mono at affwild2.SAMPLE_RATE, sample 0 at time 0 (empty: silence)

  @property
  def num_frames(self) -> int:
    return len(self.times)

  @property
  def fps(self) -> float:
    """The mean frame rate (25 for a single frame)."""
    n = len(self.times)
    return float((n - 1) / self.times[-1]) if n > 1 and self.times[-1] > 0 else 25.0


def audio_on_frame_timeline(video: DecodedVideo) -> np.ndarray:
  """The audio resampled so that frame k owns samples [b(k), b(k + 1)) at the constant rate `video.fps` (b =
  `affwild2.frame_boundary_sample`): sample s plays the real audio at the time s / sr reaches in the frame
  timestamps (linear between them; past the last frame at the mean rate). Silence where there is no audio."""
  n, sr = video.num_frames, affwild2.SAMPLE_RATE
  length = affwild2.frame_boundary_sample(n, video.fps)
  if len(video.audio) == 0:
    return np.zeros(length, np.float32)
  position = np.arange(length) / sr * video.fps  # in frames
  ends = np.r_[video.times, video.times[-1] + 1 / video.fps]
  real = np.interp(position, np.arange(n + 1), ends) * sr  # in samples of the real audio
  return np.interp(real, np.arange(len(video.audio)), video.audio, right=0.0).astype(np.float32)


class MemoryRecords(records_lib.Records):
  """`affjax.data.records.Records` whose chunks (dicts of the fields the builders write) are held in memory."""

  def __init__(self, chunks: list[dict], **fields):
    super().__init__(directory='', split='predict', **fields)
    object.__setattr__(self, 'chunks', chunks)

  @property
  def source(self):
    return self.chunks


def video_chunks(video: DecodedVideo, chunk_size: int) -> list[dict]:
  """The chunks of `video` as `affjax.data.builder` writes them (no labels)."""
  n, fps = video.num_frames, video.fps
  audio = audio_on_frame_timeline(video)
  chunks = []
  for start in range(0, n, chunk_size):
    frames = np.arange(start, start + chunk_size)
    present = frames < n
    k = frames[present]
    pad = lambda values, fill: np.concatenate([values[k], np.full(chunk_size - len(k), fill, values.dtype)])
    a0 = affwild2.frame_boundary_sample(start, fps)
    a1 = affwild2.frame_boundary_sample(min(start + chunk_size, n), fps)
    chunks.append(dict(faces=np.array([video.faces[f] for f in k] + [b''] * (chunk_size - len(k)), object),
                       face_mask=pad(video.face_mask, False), frame_mask=present,
                       label_mask=np.zeros(chunk_size, bool), labels=np.zeros((chunk_size, 2), np.float32),
                       audio=audio[a0:a1]))
  return chunks


def video_records(video: DecodedVideo, side: tuple[dict, feature_cache.ChunkFeatures] | None = None,
                  chunk_size: int = CHUNK_SIZE) -> MemoryRecords:
  """The records of `video`, one video of in-memory chunks; `side` = (part -> per-frame shape, the function that
  computes them from records) joins the features of its audio to every window, as a run's feature cache
  (`config.data.side_features_dir`)."""
  index = records_lib.VideoIndex(name=video.name, num_frames=video.num_frames, fps=video.fps, first_record=0,
                                 num_chunks=-(-video.num_frames // chunk_size), num_rows=video.num_frames)
  frames = MemoryRecords(video_chunks(video, chunk_size), chunk_size=chunk_size, videos=(index,))
  if side is None:
    return frames
  shapes, features = side
  cache = MemoryRecords(list(features(frames)), chunk_size=chunk_size, videos=frames.videos, features=dict(shapes))
  return MemoryRecords(frames.chunks, chunk_size=chunk_size, videos=frames.videos, side=cache)


def check_supported(config) -> None:
  """Raises ValueError for runs that read a feature cache of frozen backbones instead of faces and audio."""
  if config.data.features_dir:
    raise ValueError('affjax.predict takes runs that read faces and audio (the frame, clip and token views, LFAN\'s '
                     'followers included); this run reads a feature cache of frozen backbones '
                     '(config.data.features_dir), whose checkpoint holds no backbone: predict with a run trained '
                     'with the backbones inline')


def predict(video: DecodedVideo, run, timings: collections.Counter | None = None) -> np.ndarray:
  """`[N, 2]` per-frame (valence, arousal) of `video` by `run` (`affjax.video.run.LoadedRun`), as evaluation
  predicts a video of the records (`evaluate.predict_split`). `timings` (seconds) gains 'model', and 'features'
  for a run with side features (their computation)."""
  timings = collections.Counter() if timings is None else timings
  config = run.config.copy_and_resolve_references()
  with config.unlocked():
    config.data.num_workers = 0  # one video in memory: read in this process
  clock = time.perf_counter()
  records = video_records(video, run.side)
  if run.side is not None:
    timings['features'] += time.perf_counter() - clock
    clock = time.perf_counter()
  with jax.set_mesh(run.mesh):
    prediction = evaluate.predict_split(run.state, run.eval_step, records, config, run.mesh)[0].prediction
  timings['model'] += time.perf_counter() - clock
  return prediction
