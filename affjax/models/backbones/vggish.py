"""VGGish audio embedding (spec lfan 3.1): `[N, 96, 64]` log-mel examples -> `[N, 128]` (fc2, no PCA).

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

from affjax.data import audio
from affjax.models.layers import torch_bias_init, torch_dense, torch_kernel_init
from affjax.models.torch_convert import StateDictReader

Array = jax.Array

CONV_WIDTHS = (64, 'pool', 128, 'pool', 256, 256, 'pool', 512, 512, 'pool')
EXAMPLE_FRAMES, MEL_BANDS = 96, 64
EMBEDDING_DIM = 128
EXAMPLE_SAMPLES = 512 + (EXAMPLE_FRAMES - 1) * 160  # 96 frames of 512 samples (FFT length) at a 10 ms hop


def log_mel_examples(x: jnp.ndarray) -> jnp.ndarray:
  """`log(mel magnitude + 0.01)` of 16 kHz audio `[..., EXAMPLE_SAMPLES]` -> `[..., 96, 64]`: 25 ms periodic Hann
  windows (centred in 512-point FFT frames), 10 ms hop, 64 HTK mel bands over 125-7500 Hz."""
  mel = audio.mel_spectrogram(x, 16000, 512, 160, MEL_BANDS, win_length=400, f_min=125.0, f_max=7500.0,
                              center=False, power=1.0, scale='htk')
  return jnp.log(mel + 0.01)


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
