"""The whole per-frame audio-visual model: backbones (time-distributed) -> fusion -> V/A head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.backbones.audio1d import AUDIO_CNN_TABLES, AudioCNN1D
from affjax.models.backbones.mobilefacenet import MobileFaceNet
from affjax.models.fusion.cross_attn import CrossModalFusion
from affjax.models.layers import lookup, torch_dense

Array = jax.Array

MODALITIES = ('audio', 'visual')
VISUAL_BACKBONES = ('mobilefacenet',)
AUDIO_BACKBONES = tuple(AUDIO_CNN_TABLES)


def slice_audio_windows(audio: Array, offsets: Array, window: int) -> Array:
  """Per-frame windows from one waveform segment per sequence.

  audio `[B, L]`, offsets `[B, T]` int (start of frame t's window in the segment) -> `[B, T, window]`.
  Offsets are clamped into `[0, L - window]` (`lax.dynamic_slice` semantics).
  """
  one = lambda seg, off: jax.lax.dynamic_slice(seg, (off,), (window,))
  return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(audio, offsets)


class AudioVisualModel(nn.Module):
  """Per-frame valence/arousal model.

  `__call__(batch, train=...)` with batch
    faces `[B, T, S, S, 3]` uint8, audio `[B, L]` float32 (one contiguous segment per sequence),
    audio_offsets `[B, T]` int32, mask `[B, T]` bool (frame exists; False = padding)
  returns `[B, T, 2]` float32 (valence, arousal). Only the backbones of `modalities` are built, and
  only their inputs need to be in the batch.
  """

  modalities: tuple[str, ...] = MODALITIES
  visual_backbone: str = 'mobilefacenet'
  audio_backbone: str = 'zhao19'
  audio_window: int = 10560
  depthwise_impl: str = 'auto'
  fusion: Mapping[str, Any] = flax.core.FrozenDict()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch: Mapping[str, Array], *, train: bool) -> Array:
    for m in self.modalities:
      lookup(MODALITIES, m, 'modalities')
    mask = batch['mask']
    b, t = mask.shape
    flat_mask = mask.reshape(b * t)
    audio_feat = visual_feat = None
    if 'visual' in self.modalities:
      lookup(VISUAL_BACKBONES, self.visual_backbone, 'visual_backbone')
      faces = batch['faces']
      images = faces.reshape(b * t, *faces.shape[2:]).astype(self.dtype) / 255.0
      feat = MobileFaceNet(self.dtype, self.depthwise_impl, name='visual')(images, train=train, mask=flat_mask)
      visual_feat = feat.reshape(b, t, -1)
    if 'audio' in self.modalities:
      table = lookup(AUDIO_CNN_TABLES, self.audio_backbone, 'audio_backbone')
      windows = slice_audio_windows(batch['audio'], batch['audio_offsets'], self.audio_window)
      feat = AudioCNN1D(table, self.dtype, name='audio')(windows.reshape(b * t, self.audio_window), train=train,
                                                        mask=flat_mask)
      audio_feat = feat.reshape(b, t, -1)
    x = CrossModalFusion(**self.fusion, dtype=self.dtype, name='fusion')(audio_feat, visual_feat, mask, train=train)
    return torch_dense(2, x.shape[-1], dtype=jnp.float32, name='va')(x.astype(jnp.float32))
