"""Spectral audio features in jax.numpy (they run on device, inside jit, or in a feature tool).

The building blocks every system composes with its own parameters: framed power spectrogram
(periodic Hann window centred in the FFT frame, optional centre/reflect padding, as torchaudio and
librosa), mel filterbanks (HTK or Slaney scale), mel spectrogram, dB conversion with a top-dB clamp,
DCT-II (MFCC) and regression deltas.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16000  # of the records' audio (`affjax.data.affwild2.SAMPLE_RATE`), which every front-end reads
MEL_SCALES = ('htk', 'slaney')


def _hz_to_mel(f: np.ndarray, scale: str) -> np.ndarray:
  f = np.asarray(f, np.float64)
  if scale == 'htk':
    return 2595.0 * np.log10(1.0 + f / 700.0)
  # Slaney: linear below 1 kHz, logarithmic above.
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
  m = np.asarray(m, np.float64)
  if scale == 'htk':
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=32)
def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None,
                   scale: str = 'htk', slaney_norm: bool = False) -> np.ndarray:
  """Triangular filters `[n_fft // 2 + 1, n_mels]` (float32), equally spaced on the mel `scale`.

  `slaney_norm` scales each filter to unit area (librosa's norm='slaney'); without it every filter
  peaks at 1 (torchaudio's default).
  """
  if scale not in MEL_SCALES:
    raise ValueError(f'mel scale {scale!r} is not one of {MEL_SCALES}')
  f_max = sample_rate / 2 if f_max is None else f_max
  freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min, scale), _hz_to_mel(f_max, scale), n_mels + 2), scale)
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (freqs[:, None] - lower) / (centre - lower)
  falling = (upper - freqs[:, None]) / (upper - centre)
  fb = np.maximum(0.0, np.minimum(rising, falling))
  if slaney_norm:
    fb *= 2.0 / (upper - lower)
  return fb.astype(np.float32)


def hann_window(win_length: int, n_fft: int) -> np.ndarray:
  """Periodic Hann window of `win_length`, zero-padded to `n_fft` with the window centred (torch.stft)."""
  w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
  left = (n_fft - win_length) // 2
  return np.pad(w, (left, n_fft - win_length - left)).astype(np.float32)


def power_spectrogram(x: jnp.ndarray, n_fft: int, hop_length: int, win_length: int | None = None,
                      center: bool = True, power: float = 2.0) -> jnp.ndarray:
  """|STFT|^power of `x [..., N]` -> `[..., frames, n_fft // 2 + 1]`.

  With `center` the signal is reflect-padded by n_fft // 2 on both sides and has 1 + N // hop frames;
  without, frames start at 0, hop, ... while they fit: 1 + (N - n_fft) // hop.
  """
  x = jnp.asarray(x, jnp.float32)
  if center:
    pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    x = jnp.pad(x, pad, mode='reflect')
  num_frames = 1 + (x.shape[-1] - n_fft) // hop_length
  if num_frames < 1:
    raise ValueError(f'signal of {x.shape[-1]} samples is shorter than one FFT frame ({n_fft})')
  idx = np.arange(num_frames)[:, None] * hop_length + np.arange(n_fft)[None, :]
  frames = x[..., idx] * hann_window(win_length or n_fft, n_fft)
  magnitude = jnp.abs(jnp.fft.rfft(frames, n=n_fft, axis=-1))
  return magnitude if power == 1.0 else magnitude ** power


def mel_spectrogram(x: jnp.ndarray, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
                    win_length: int | None = None, f_min: float = 0.0, f_max: float | None = None,
                    center: bool = True, power: float = 2.0, scale: str = 'htk',
                    slaney_norm: bool = False) -> jnp.ndarray:
  """Mel spectrogram of `x [..., N]` -> `[..., frames, n_mels]` (no log)."""
  spec = power_spectrogram(x, n_fft, hop_length, win_length, center=center, power=power)
  fb = mel_filterbank(n_fft, sample_rate, n_mels, f_min, f_max, scale, slaney_norm)
  return jnp.matmul(spec, fb, precision='highest')


def to_db(spec: jnp.ndarray, power: bool = True, amin: float = 1e-10, top_db: float | None = 80.0,
          axes: tuple[int, ...] = (-2, -1)) -> jnp.ndarray:
  """10·log10 (power) or 20·log10 (magnitude) of max(spec, amin), clamped to at most `top_db` below
  the maximum over `axes` (one spectrogram's frames and bins by default)."""
  db = (10.0 if power else 20.0) * jnp.log10(jnp.maximum(spec, amin))
  if top_db is not None:
    db = jnp.maximum(db, db.max(axis=axes, keepdims=True) - top_db)
  return db


def dct_basis(n: int, n_out: int) -> np.ndarray:
  """`[n, n_out]` float32 matrix of the orthonormal DCT-II (first `n_out` coefficients of `n` inputs)."""
  k, i = np.arange(n_out)[None, :], np.arange(n)[:, None]
  basis = np.cos(np.pi / n * (i + 0.5) * k) * np.sqrt(2.0 / n)
  basis[:, 0] /= np.sqrt(2.0)
  return basis.astype(np.float32)


def dct_ii(x: jnp.ndarray, n_out: int) -> jnp.ndarray:
  """Orthonormal DCT-II over the last axis, first `n_out` coefficients (MFCCs from log-mel)."""
  return jnp.matmul(x, dct_basis(x.shape[-1], n_out), precision='highest')


def deltas(x: jnp.ndarray, width: int = 2, axis: int = -2) -> jnp.ndarray:
  """Regression deltas (HTK): d_t = Σ_{n=1..width} n·(x_{t+n} − x_{t−n}) / (2·Σ n²), edges repeated."""
  axis = axis % x.ndim
  pad = [(0, 0)] * x.ndim
  pad[axis] = (width, width)
  xp = jnp.pad(x, pad, mode='edge')
  length = x.shape[axis]
  take = lambda start: jnp.take(xp, jnp.arange(start, start + length), axis=axis)
  num = sum(n * (take(width + n) - take(width - n)) for n in range(1, width + 1))
  return num / (2.0 * sum(n * n for n in range(1, width + 1)))
