"""The token timeline of the sparse end-to-end model (spec sparse_e2e §5.1): windows of T tokens.

Token j of a video sits at time t_j = j / r (r = `config.model.token_rate_hz`, e.g. 10 per second) and
exists while t_j lies inside the video (t_j < num_frames / fps). It takes video frame f_j = round(t_j·fps)
(halves up, clamped to the last frame) for its face, label and masks, and the 32 log-mel frames [c − 16,
c + 16) around c = round(80·t_j) (`affjax.models.audio.token_mel`; audio outside the video is silence).

On host (grain workers): the window table over token indices, the window loader (faces of the token frames
only, one contiguous audio segment per window from which each token's patch is sliced on device) and the
evaluation's per-video token averages, linearly interpolated to every frame time f / fps. On device:
`affjax.models.audio.token_mel.mel_patches`.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from affjax.data import affwild2, augment, records as records_lib
from affjax.data.views import base, predictions
from affjax.models.audio import token_mel

NAME = 'tokens'


# ----------------------------------------------------------------------------- the timeline
def num_tokens(num_frames: int, fps: float, rate: float) -> int:
  """Tokens of a video: the j >= 0 with j / rate < num_frames / fps (at least token 0)."""
  return max(1, math.ceil(num_frames * rate / fps - 1e-9))


def token_frames(j: np.ndarray, fps: float, rate: float, num_frames: int) -> np.ndarray:
  """Video frame f_j = floor(j·fps / rate + 1/2) of tokens `j` (0-based), clamped to [0, num_frames)."""
  return np.clip(np.floor(np.asarray(j) * fps / rate + 0.5), 0, num_frames - 1).astype(np.int64)


def patch_starts(j: np.ndarray, rate: float) -> np.ndarray:
  """First audio sample (from the video's start; negative before it) of the log-mel patch of tokens `j`:
  mel frames [c − 16, c + 16), c = floor(80·j / rate + 1/2), frame m spanning samples 200·m ± 200."""
  c = np.floor(np.asarray(j) * token_mel.MEL_RATE / rate + 0.5).astype(np.int64)
  return (c - token_mel.PATCH_FRAMES // 2) * token_mel.HOP - token_mel.N_FFT // 2


def segment_length(window: int, rate: float) -> int:
  """Audio samples shipped per window of `window` tokens: every token's patch, from the first one's start."""
  return token_mel.PATCH_SAMPLES + token_mel.HOP * (math.ceil((window - 1) * token_mel.MEL_RATE / rate) + 1)


def window_table(videos, window: int, hop: int, rate: float) -> np.ndarray:
  """[M, 2] int64 rows (video index, first token) of every window of `window` tokens, hop `hop`, in order."""
  rows = [np.stack([np.full(len(s), i), s], axis=1) for i, v in enumerate(videos)
          for s in [base.window_starts(num_tokens(v.num_frames, v.fps, rate), window, hop)]]
  return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def example_batch(config, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a token-view batch (the sparse_e2e model's input signature)."""
  t, s = config.data.window, config.data.image_size
  return dict(faces=np.zeros((batch_size, t, s, s, 3), np.uint8),
              audio=np.zeros((batch_size, segment_length(t, config.model.token_rate_hz)), np.float32),
              audio_offsets=np.zeros((batch_size, t), np.int32), mask=np.ones((batch_size, t), bool))


# ----------------------------------------------------------------------------- the window loader
@dataclasses.dataclass(frozen=True)
class TokenWindowLoader:
  """Reads one window (video index, first token j0) of `window` tokens and returns, per token: faces
  `[T, S, S, 3]` uint8 (zeros without a face), labels `[T, 2]`, label_mask, face_mask and mask `[T]` (the
  token exists), frames `[T]` (f_j), and audio `[segment_length]` with audio_offsets `[T]` (start of token
  j's `token_mel.PATCH_SAMPLES` in it). `augment` (training): `augment.augment_window` kwargs, drawn once per window.
  Picklable for grain workers.
  """
  records: records_lib.Records
  window: int
  rate: float
  image_size: int
  augment: dict | None = None

  def __call__(self, row: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    video_index, first = int(row[0]), int(row[1])
    video = self.records.videos[video_index]
    n, fps = video.num_frames, video.fps
    j = np.arange(first, first + self.window)
    mask = j < num_tokens(n, fps, self.rate)
    frames = token_frames(j, fps, self.rate, n)
    starts = patch_starts(j, self.rate)
    segment = np.zeros(segment_length(self.window, self.rate), np.float32)
    s0, s1 = int(starts[0]), int(starts[0]) + len(segment)
    # The frames of the tokens and of the segment's samples (a sample lies within one frame of s·fps/sr).
    lo = int(np.clip(min(frames[0], math.floor(s0 * fps / affwild2.SAMPLE_RATE) - 1), 0, n - 1))
    hi = int(np.clip(max(frames[-1], math.ceil(s1 * fps / affwild2.SAMPLE_RATE) + 1), 0, n - 1))
    chunks, first_chunk, field = records_lib.read_frames(self.records, video, lo, hi - lo + 1)
    rows = frames - lo
    face_mask = field('face_mask', False)[rows] & mask
    faces = np.zeros((self.window, self.image_size, self.image_size, 3), np.uint8)
    jpegs = field('faces', b'')
    for i in np.flatnonzero(face_mask):
      faces[i] = records_lib.decode_face(jpegs[rows[i]], self.image_size, video.name, int(frames[i]))
    if self.augment is not None:
      faces = augment.augment_window(faces, rng, **self.augment)
    audio = np.concatenate([ch['audio'] for ch in chunks])
    a0 = affwild2.frame_boundary_sample(first_chunk * self.records.chunk_size, fps)
    a, b = max(s0, a0), min(s1, a0 + len(audio))
    if b > a:
      segment[a - s0:b - s0] = audio[a - a0:b - a0]
    return dict(faces=faces, audio=segment, audio_offsets=(starts - s0).astype(np.int32),
                labels=field('labels', 0.0)[rows], label_mask=field('label_mask', False)[rows] & mask,
                face_mask=face_mask, mask=mask, frames=frames.astype(np.int32), video_index=np.int32(video_index),
                start=np.int32(first))


def loader(records: records_lib.Records, config, *, train: bool) -> TokenWindowLoader:
  return TokenWindowLoader(records=records, window=config.data.window, rate=config.model.token_rate_hz,
                           image_size=config.data.image_size, augment=config.data.augment.to_dict() if train else None)


# ----------------------------------------------------------------------------- evaluation
@dataclasses.dataclass
class TokenPredictions:
  """Token predictions `[num_tokens, 2]` of one video, averaged over the windows that cover each token."""
  video: records_lib.VideoIndex
  rate: float
  sums: np.ndarray
  counts: np.ndarray

  @classmethod
  def empty(cls, video: records_lib.VideoIndex, rate: float) -> 'TokenPredictions':
    n = num_tokens(video.num_frames, video.fps, rate)
    return cls(video=video, rate=rate, sums=np.zeros((n, 2)), counts=np.zeros(n))

  def add(self, first: int, pred: np.ndarray, mask: np.ndarray) -> None:
    """Adds one window's predictions `[T, 2]` of tokens first, first + 1, ... where `mask` `[T]`."""
    j = np.arange(first, first + len(mask))[mask]
    self.sums[j] += pred[mask]
    self.counts[j] += 1

  def frame_prediction(self) -> np.ndarray:
    """`[num_frames, 2]`: the token averages (at times j / rate) linearly interpolated to every frame time
    f / fps; frames before the first or after the last token hold its value."""
    if not self.counts.all():
      raise RuntimeError(f'video {self.video.name}: tokens {np.flatnonzero(self.counts == 0)[:5]}... got no prediction')
    mean = self.sums / self.counts[:, None]
    times, token_times = np.arange(self.video.num_frames) / self.video.fps, np.arange(len(mean)) / self.rate
    return np.stack([np.interp(times, token_times, mean[:, d]) for d in range(2)], axis=-1)


@dataclasses.dataclass
class SplitTokenPredictions:
  """A split's window predictions of tokens (a `base.SplitPredictions`): averaged per token over the windows,
  then interpolated to every frame, with the frames' labels and masks read from the records."""
  records: records_lib.Records
  per_video: list[TokenPredictions]

  @classmethod
  def of(cls, records: records_lib.Records, config) -> 'SplitTokenPredictions':
    return cls(records=records, per_video=[TokenPredictions.empty(v, config.model.token_rate_hz)
                                           for v in records.videos])

  def add(self, window, pred: np.ndarray) -> None:
    self.per_video[window['video_index']].add(window['start'], pred, window['mask'])

  def videos(self) -> list[predictions.VideoPredictions]:
    return [predictions.from_frame_prediction(self.records, v.video, v.frame_prediction()) for v in self.per_video]


def windows(records: records_lib.Records, config, *, train: bool) -> tuple[np.ndarray, base.Loader]:
  """Windows of `data.window` tokens at `data.train_hop` / `data.eval_hop` tokens."""
  hop = config.data.train_hop if train else config.data.eval_hop
  return (window_table(records.videos, config.data.window, hop, config.model.token_rate_hz),
          loader(records, config, train=train))


def validate(config) -> None:
  """Tokens at `model.token_rate_hz` per second, read from the frame records (no feature cache)."""
  base.require('token_rate_hz' in config.model, 'data.view', NAME,
               'needs config.model.token_rate_hz (tokens per second)')
  rate = config.model.token_rate_hz
  base.require(isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate) and rate > 0,
               'model.token_rate_hz', rate, 'must be a finite number > 0')
  base.require(not config.data.features_dir, 'data.features_dir', config.data.features_dir,
               'the token view reads faces and audio from the frame records: leave it empty')


VIEW = base.View(name=NAME, windows=windows, example_batch=example_batch, predictions=SplitTokenPredictions.of,
                 validate=validate, unit=lambda config: ('tokens', config.data.window))
