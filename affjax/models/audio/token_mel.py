"""The sparse end-to-end model's audio front-end (spec sparse_e2e §5.1): per token, a log-mel patch of the 32 mel
frames around it (n_fft 400, 25 ms Hann, hop 200 = 12.5 ms, 128 mels, power 2, log(x + 1e-6); mel frame m is
centred on audio sample 200·m). Where the patches sit on the timeline: `affjax.data.views.tokens`."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from affjax.models.audio import spectral

N_FFT = 400
HOP = 200
N_MELS = 128
PATCH_FRAMES = 32
PATCH_SAMPLES = N_FFT + (PATCH_FRAMES - 1) * HOP  # 6600 samples: 32 mel frames without centre padding
MEL_RATE = spectral.SAMPLE_RATE // HOP  # 80 mel frames per second
LOG_OFFSET = 1e-6


def mel_patches(windows: jax.Array) -> jax.Array:
  """Log-mel patches of the tokens: windows `[..., PATCH_SAMPLES]` (16 kHz) -> `[..., PATCH_FRAMES, N_MELS]`
  float32."""
  mel = spectral.mel_spectrogram(windows, spectral.SAMPLE_RATE, N_FFT, HOP, N_MELS, center=False)
  return jnp.log(mel + LOG_OFFSET)
