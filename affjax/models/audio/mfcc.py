"""LFAN's per-video-frame MFCC features (spec lfan 3.1), in jax.numpy on `affjax.models.audio.spectral`'s blocks.

openSMILE-like `MFCC12_0_D_A`: 13 cepstra c0..c12 of a 26-band HTK mel power spectrum in dB (25 ms periodic Hann
window in a 512-point FFT, 10 ms hop), liftered with L = 22, followed by their regression deltas and the deltas
of the deltas (width 2): 39 values per 10 ms row. A video frame takes the row whose 25 ms window is centred on
the frame: `frame_mfcc` computes it from `FRAME_MFCC_SAMPLES` samples centred on the frame (the 4 rows on each
side that the deltas need), so it runs on device on the window's audio segment.

Differences to openSMILE (not reproduced): Hann instead of Hamming window, no pre-emphasis, 10 log10 of mel
power instead of the log of mel magnitude; the model z-scores the features, so only their shape matters.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from affjax.models.audio import spectral

SAMPLE_RATE = spectral.SAMPLE_RATE
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512
N_MELS = 26
N_CEPSTRA = 13
LIFTER = 22
DELTA_WIDTH = 2
MFCC_DIM = 3 * N_CEPSTRA
# Rows on each side of a frame's row that its delta-of-delta depends on, and the samples they span.
CONTEXT_ROWS = 2 * DELTA_WIDTH
FRAME_MFCC_SAMPLES = N_FFT + 2 * CONTEXT_ROWS * HOP_LENGTH  # the 25 ms window sits centred in each 512-sample frame


def lifter_weights(n: int = N_CEPSTRA, lifter: int = LIFTER) -> np.ndarray:
  """Sinusoidal cepstral liftering `1 + L/2 sin(pi (i + 1) / L)` for i = 0..n-1, as HTK and librosa: `[n]`."""
  return (1.0 + lifter / 2.0 * np.sin(np.pi * np.arange(1, n + 1) / lifter)).astype(np.float32)


def mfcc(x: jnp.ndarray) -> jnp.ndarray:
  """Liftered MFCCs c0..c12 of `x [..., N]` (16 kHz, no centre padding): `[..., 1 + (N - 512) // 160, 13]`."""
  mel = spectral.mel_spectrogram(x, SAMPLE_RATE, N_FFT, HOP_LENGTH, N_MELS, win_length=WIN_LENGTH, center=False)
  return spectral.dct_ii(spectral.to_db(mel, top_db=None), N_CEPSTRA) * lifter_weights()


def mfcc_with_deltas(x: jnp.ndarray) -> jnp.ndarray:
  """`[..., rows, 39]`: MFCCs, their deltas and the deltas of the deltas (edge rows repeated at the ends)."""
  c = mfcc(x)
  d = spectral.deltas(c, DELTA_WIDTH, axis=-2)
  return jnp.concatenate([c, d, spectral.deltas(d, DELTA_WIDTH, axis=-2)], axis=-1)


def frame_mfcc(windows: jnp.ndarray) -> jnp.ndarray:
  """The 39-d MFCC row centred in each `[..., FRAME_MFCC_SAMPLES]` audio window: `[..., 39]`."""
  if windows.shape[-1] != FRAME_MFCC_SAMPLES:
    raise ValueError(f'frame_mfcc needs windows of {FRAME_MFCC_SAMPLES} samples (config.data.audio_window), '
                     f'got {windows.shape[-1]}')
  return mfcc_with_deltas(windows)[..., CONTEXT_ROWS, :]
