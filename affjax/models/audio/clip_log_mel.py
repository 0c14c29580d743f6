"""RJCA's audio front-end (`../shared/specs/rjca.md` §5): one log-mel spectrogram per clip of right-aligned audio."""
from __future__ import annotations

import jax.numpy as jnp

from affjax.models.audio import spectral

# Reference log-mel scaling: (dB + 14.8) / 19.895.
LOG_MEL_OFFSET, LOG_MEL_SCALE = 14.8, 19.895
HOP_MS = 10.0


def hop_samples(sample_rate: int = spectral.SAMPLE_RATE, hop_ms: float = HOP_MS) -> int:
  """Samples between consecutive spectrogram frames."""
  return round(sample_rate * hop_ms / 1000)


def log_mel_samples(num_frames: int, hop: int) -> int:
  """Waveform samples whose centred spectrogram has `num_frames` frames: (num_frames - 1) * hop."""
  return (num_frames - 1) * hop


def clip_log_mel(waveforms: jnp.ndarray, num_samples: jnp.ndarray, *, sample_rate: int = spectral.SAMPLE_RATE,
                 n_mels: int = 64, window_ms: float = 20.0, hop_ms: float = HOP_MS, min_seconds: float = 1.03,
                 top_db: float = 80.0) -> jnp.ndarray:
  """Per-clip log-mel spectrograms `[..., F, n_mels]` of right-aligned clip audio `waveforms [..., S]`
  (S = (F - 1) * hop) holding `num_samples [...]` samples of the clip.

  Power mel spectrogram (periodic Hann of `window_ms` centred in the next power-of-two FFT, hop `hop_ms`,
  centre/reflect padding, HTK mels up to sr/2), dB clamped `top_db` below the clip's maximum, then
  (dB + 14.8) / 19.895. A clip shorter than `min_seconds` is silence-padded on the left to it (the
  reference pads to 1.03 s: 104 frames); the frames before that are 0 (left padding after scaling).
  """
  win, hop = round(sample_rate * window_ms / 1000), hop_samples(sample_rate, hop_ms)
  n_fft = 1 << (win - 1).bit_length()
  spec = spectral.mel_spectrogram(waveforms, sample_rate, n_fft, hop, n_mels, win_length=win)
  frames = spec.shape[-2]
  if waveforms.shape[-1] != log_mel_samples(frames, hop):
    raise ValueError(f'clip audio of {waveforms.shape[-1]} samples: expected (frames - 1) * hop samples')
  min_samples = round(min_seconds * sample_rate / hop) * hop
  num_valid = 1 + jnp.maximum(num_samples, min_samples) // hop
  valid = (jnp.arange(frames) >= frames - num_valid[..., None])[..., None]
  db = spectral.to_db(jnp.where(valid, spec, 0.0), top_db=top_db)  # padding frames never set the maximum
  return jnp.where(valid, (db + LOG_MEL_OFFSET) / LOG_MEL_SCALE, 0.0)
