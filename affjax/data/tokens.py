"""The token timeline view of a frame window (spec sparse_e2e §5.1), computed on device inside the model.

Tokens sit on every `stride`-th frame of a window (stride 3 = 10 tokens/s at 30 fps). Each token gets its
frame's face and a log-mel patch `[128 mels, 32 frames]` (n_fft 400, 25 ms Hann, hop 200 = 12.5 ms,
power 2, log(x + 1e-6)) centred on the frame's audio centre, from the window's audio segment. Token
predictions are linearly interpolated back to every frame of the window.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from affjax.data import affwild2, audio as audio_lib

N_FFT = 400
HOP = 200
N_MELS = 128
PATCH_FRAMES = 32
PATCH_SAMPLES = N_FFT + (PATCH_FRAMES - 1) * HOP  # 6600 samples: 32 mel frames without centre padding
LOG_OFFSET = 1e-6


def mel_patches(windows: jax.Array) -> jax.Array:
  """Log-mel patches of the tokens: windows `[..., PATCH_SAMPLES]` (16 kHz, centred on the token's frame)
  -> `[..., PATCH_FRAMES, N_MELS]` float32."""
  mel = audio_lib.mel_spectrogram(windows, affwild2.SAMPLE_RATE, N_FFT, HOP, N_MELS, center=False)
  return jnp.log(mel + LOG_OFFSET)


def to_frames(pred: jax.Array, token_mask: jax.Array, stride: int, num_frames: int) -> jax.Array:
  """Linear interpolation of token predictions `[B, Tt, D]` (token j at frame j·stride) to `[B, num_frames,
  D]`. Padding tokens (`token_mask` False, a tail) take the last valid token's value; frames after the last
  token hold it."""
  tt = pred.shape[1]
  last = jnp.maximum(token_mask.sum(1) - 1, 0)
  held = jnp.take_along_axis(pred, last[:, None, None], axis=1)
  pred = jnp.where(token_mask[..., None], pred, held)
  frames = jnp.arange(num_frames)
  i0 = jnp.minimum(frames // stride, tt - 1)
  i1 = jnp.minimum(i0 + 1, tt - 1)
  frac = jnp.where(i1 > i0, (frames - i0 * stride) / stride, 0.0)[None, :, None]
  return (1 - frac) * pred[:, i0] + frac * pred[:, i1]
