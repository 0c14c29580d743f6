"""VGGish audio embedding (spec lfan 3.1): `[N, 96, 64]` log-mel examples -> `[N, 128]` (fc2, no PCA), and LFAN's
per-video-frame examples (`frame_examples`).

  conv 64 -> pool -> conv 128 -> pool -> conv 256 x 2 -> pool -> conv 512 x 2 -> pool      96 x 64 -> 6 x 4
  flatten (H, W, C) -> Dense 4096 -> ReLU -> Dense 4096 -> ReLU -> Dense 128 (fc2, linear)
3x3 convolutions (SAME, bias, ReLU), 2x2 max pooling with stride 2. The input is one channel: 96 frames of 10 ms
by 64 mel bands, `log(mel magnitude + 0.01)` (`log_mel_examples`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import numpy as np

from affjax.models.audio import spectral
from affjax.models.layers import torch_bias_init, torch_dense, torch_kernel_init
from affjax.models.torch_convert import StateDictReader

Array = jax.Array

CONV_WIDTHS = (64, 'pool', 128, 'pool', 256, 256, 'pool', 512, 512, 'pool')
EXAMPLE_FRAMES, MEL_BANDS = 96, 64
EMBEDDING_DIM = 128
SAMPLE_RATE, HOP, N_FFT, WIN_LENGTH = 16000, 160, 512, 400
EXAMPLE_SAMPLES = N_FFT + (EXAMPLE_FRAMES - 1) * HOP  # 96 frames of 512 samples (FFT length) at a 10 ms hop
WINDOW_OFFSET = (N_FFT - WIN_LENGTH) // 2  # the 25 ms window sits centred in each 512-sample FFT frame
END_PADDING = SAMPLE_RATE  # the waveform is edge-padded by 1 s at the end


def log_mel(x: jnp.ndarray) -> jnp.ndarray:
  """`log(mel magnitude + 0.01)` of 16 kHz audio `[..., L]` -> `[..., 1 + (L - 512) // 160, 64]`: 25 ms periodic Hann
  windows (centred in 512-point FFT frames), 10 ms hop, 64 HTK mel bands over 125-7500 Hz."""
  mel = spectral.mel_spectrogram(x, SAMPLE_RATE, N_FFT, HOP, MEL_BANDS, win_length=WIN_LENGTH, f_min=125.0,
                              f_max=7500.0, center=False, power=1.0, scale='htk')
  return jnp.log(mel + 0.01)


def log_mel_examples(x: jnp.ndarray) -> jnp.ndarray:
  """One example per `[..., EXAMPLE_SAMPLES]` audio segment: `[..., 96, 64]`."""
  return log_mel(x)


def padded_waveform(wave: np.ndarray) -> np.ndarray:
  """The 16 kHz waveform `[L]` edge-padded by 1 s at the end, and by `WINDOW_OFFSET` zeros at the start so that mel
  frame j's 25 ms window starts at sample 160 j of `wave`."""
  wave = np.asarray(wave, np.float32)
  last = wave[-1] if len(wave) else 0.0
  return np.concatenate([np.zeros(WINDOW_OFFSET, np.float32), wave, np.full(END_PADDING, last, np.float32)])


def frame_example_starts(num_frames: int, fps: float, num_samples: int) -> np.ndarray:
  """`[N]` first sample in the padded waveform (of `num_samples`) of each video frame's example: 160 round(100 i /
  fps), the mel frame at which frame i starts (i / fps), clamped to the last whole example."""
  last = (num_samples - EXAMPLE_SAMPLES) // HOP
  if last < 0:
    raise ValueError(f'{num_samples} samples make no {EXAMPLE_FRAMES}-frame VGGish example')
  starts = np.round(np.arange(num_frames) * (SAMPLE_RATE / HOP) / fps).astype(np.int64)
  return HOP * np.minimum(starts, last)


def frame_examples(wave: np.ndarray, fps: float, num_frames: int) -> np.ndarray:
  """The log-mel example of every video frame of a video (spec lfan 3.1): `[N, 96, 64]` float32, the 96 mel frames
  (0.96 s) from `frame_example_starts` of the `padded_waveform`."""
  x = padded_waveform(wave)
  starts = frame_example_starts(num_frames, fps, len(x))
  return np.asarray(log_mel_examples(x[starts[:, None] + np.arange(EXAMPLE_SAMPLES)]))


class VGGish(nn.Module):
  """`[N, 96, 64]` (or `[N, 96, 64, 1]`) log-mel examples -> `[N, 128]` embeddings."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim == 3:
      x = x[..., None]
    if x.shape[1:] != (EXAMPLE_FRAMES, MEL_BANDS, 1):
      raise ValueError(f'VGGish needs [N, {EXAMPLE_FRAMES}, {MEL_BANDS}] log-mel examples, got {list(x.shape)}')
    x = x.astype(self.dtype)
    i = 0
    for width in CONV_WIDTHS:
      if width == 'pool':
        x = nn.max_pool(x, (2, 2), (2, 2))
        continue
      x = nn.relu(nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), kernel_init=torch_kernel_init,
                          bias_init=torch_bias_init(9 * x.shape[-1]), dtype=self.dtype, name=f'conv{i}')(x))
      i += 1
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(torch_dense(4096, x.shape[-1], dtype=self.dtype, name='fc1_1')(x))
    x = nn.relu(torch_dense(4096, 4096, dtype=self.dtype, name='fc1_2')(x))
    return torch_dense(EMBEDDING_DIM, 4096, dtype=self.dtype, name='fc2')(x).astype(jnp.float32)


def from_torch(sd: StateDictReader) -> dict[str, dict]:
  """Variables from a PyTorch VGGish state dict with torchvggish's names: `features.<k>` for the convolutions
  (k = 0, 3, 6, 8, 11, 13: Sequential indices between the ReLUs and pools) and `embeddings.{0,2,4}` for the dense
  layers. torchvggish flattens in (H, W, C) order like TF, so the dense kernels need no permutation."""
  params, k, i = {}, 0, 0
  for width in CONV_WIDTHS:
    if width == 'pool':
      k += 1
      continue
    params[f'conv{i}'] = sd.conv(f'features.{k}', bias=True)
    k += 2  # conv, ReLU
    i += 1
  for name, index in (('fc1_1', 0), ('fc1_2', 2), ('fc2', 4)):
    params[name] = sd.dense(f'embeddings.{index}')
  return {'params': params}
