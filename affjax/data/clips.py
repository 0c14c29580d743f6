"""Clip views of a video (RJCA, `../shared/specs/rjca.md` §5): windows of L clips of 32 frames, 8 frames
sampled per clip, one audio span and one log-mel spectrogram per clip.

Every frame is the last frame of exactly one clip. Window (g, j) of a video (group g, offset j in [0, 32))
has clip i (i in [0, L)) ending at frame `e = g * L * 32 + j + 32 * i` (0-based) and spanning frames
(e - 32, e]; frames before 0 or past the video's end do not exist. A clip is predicted at its last frame
e, its target is the label of frame e.

Frame selection among the n frames of the span that have a face crop (not the labels: spec B11):
n = 32 every 4th, 24-31 every 3rd, 16-23 every 2nd, counting back from the last one and keeping the
last 8; 8-15 the last 8; 1-7 all of them, the last one repeated up to 8; n = 0 is an empty clip.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from affjax.data import affwild2, audio

CLIP_LENGTH = 32  # frames spanned by a clip
FRAMES_PER_CLIP = 8  # frames sampled from a clip
# Reference log-mel scaling: (dB + 14.8) / 19.895.
LOG_MEL_OFFSET, LOG_MEL_SCALE = 14.8, 19.895


def sampling_step(num_available: int) -> int:
  """Every how many available frames one is kept: 4 (32), 3 (24-31), 2 (16-23), 1 (1-15)."""
  if not 1 <= num_available <= CLIP_LENGTH:
    raise ValueError(f'a clip has 1..{CLIP_LENGTH} available frames, got {num_available}')
  return max(1, num_available // 8)


def select_frames(available: np.ndarray) -> np.ndarray:
  """The 8 frames `[8]` (ascending, the last one repeated if fewer than 8) sampled from the ascending
  frame ids `available` (1..32 of them) of one clip."""
  available = np.asarray(available)
  picked = available[::-1][::sampling_step(len(available))][:FRAMES_PER_CLIP][::-1]
  return np.concatenate([picked, np.repeat(picked[-1:], FRAMES_PER_CLIP - len(picked))])


def num_windows(num_frames: int, num_clips: int) -> int:
  """Windows of a video: 32 per group of L * 32 frames (every frame ends one clip of one window)."""
  return math.ceil(num_frames / (num_clips * CLIP_LENGTH)) * CLIP_LENGTH


def clip_ends(window: int, num_clips: int) -> np.ndarray:
  """The last frame `[L]` (0-based) of each clip of window number `window` of a video."""
  group, offset = divmod(window, CLIP_LENGTH)
  return group * num_clips * CLIP_LENGTH + offset + CLIP_LENGTH * np.arange(num_clips)


def clip_frames(ends: np.ndarray, face_mask: np.ndarray, first_frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The sampled frames of clips ending at `ends` `[L]`, given the face mask of frames
  [first_frame, first_frame + len(face_mask)) (frames outside it have no face).

  Returns frames `[L, 8]` (0-based frame ids; 0 for empty clips) and has_face `[L]` (the clip is not empty).
  """
  frames = np.zeros((len(ends), FRAMES_PER_CLIP), np.int64)
  has_face = np.zeros(len(ends), bool)
  for i, end in enumerate(ends):
    span = np.arange(end - CLIP_LENGTH + 1, end + 1)
    inside = (span >= first_frame) & (span < first_frame + len(face_mask))
    available = span[inside][face_mask[span[inside] - first_frame]]
    if len(available):
      frames[i], has_face[i] = select_frames(available), True
  return frames, has_face


def log_mel_samples(num_frames: int, hop: int) -> int:
  """Waveform samples whose centred spectrogram has `num_frames` frames: (num_frames - 1) * hop."""
  return (num_frames - 1) * hop


def clip_audio(samples: np.ndarray, samples_start: int, end: int, fps: float, length: int) -> tuple[np.ndarray, int]:
  """The audio of the clip ending at frame `end`, right-aligned in `length` zeros.

  `samples` holds the video's 16 kHz audio from sample `samples_start` on and must cover the clip (as far
  as the video's audio goes). The clip owns samples [b(end - 31), b(end + 1)) (b = frame boundary, from 0
  when the clip starts before the video); a longer span keeps its last `length` samples.
  Returns (`[length]` float32, number of the clip's samples in it).
  """
  s0 = affwild2.frame_boundary_sample(max(end - CLIP_LENGTH + 1, 0), fps)
  s1 = affwild2.frame_boundary_sample(end + 1, fps)
  s0 = max(s0, s1 - length)
  span = samples[s0 - samples_start:s1 - samples_start]
  out = np.zeros(length, np.float32)
  out[length - len(span):] = span
  return out, len(span)


def clip_log_mel(waveforms: jnp.ndarray, num_samples: jnp.ndarray, *, sample_rate: int = affwild2.SAMPLE_RATE,
                 n_mels: int = 64, window_ms: float = 20.0, hop_ms: float = 10.0, min_seconds: float = 1.03,
                 top_db: float = 80.0) -> jnp.ndarray:
  """Per-clip log-mel spectrograms `[..., F, n_mels]` of right-aligned clip audio `waveforms [..., S]`
  (S = (F - 1) * hop) holding `num_samples [...]` samples of the clip.

  Power mel spectrogram (periodic Hann of `window_ms` centred in the next power-of-two FFT, hop `hop_ms`,
  centre/reflect padding, HTK mels up to sr/2), dB clamped `top_db` below the clip's maximum, then
  (dB + 14.8) / 19.895. A clip shorter than `min_seconds` is silence-padded on the left to it (the
  reference pads to 1.03 s: 104 frames); the frames before that are 0 (left padding after scaling).
  """
  win, hop = round(sample_rate * window_ms / 1000), round(sample_rate * hop_ms / 1000)
  n_fft = 1 << (win - 1).bit_length()
  spec = audio.mel_spectrogram(waveforms, sample_rate, n_fft, hop, n_mels, win_length=win)
  frames = spec.shape[-2]
  if waveforms.shape[-1] != log_mel_samples(frames, hop):
    raise ValueError(f'clip audio of {waveforms.shape[-1]} samples: expected (frames - 1) * hop samples')
  min_samples = round(min_seconds * sample_rate / hop) * hop
  num_valid = 1 + jnp.maximum(num_samples, min_samples) // hop
  valid = (jnp.arange(frames) >= frames - num_valid[..., None])[..., None]
  db = audio.to_db(jnp.where(valid, spec, 0.0), top_db=top_db)  # padding frames never set the maximum
  return jnp.where(valid, (db + LOG_MEL_OFFSET) / LOG_MEL_SCALE, 0.0)
