"""The whole RJCA model: per-clip R(2+1)D-18 (faces) and ResNet-18 (log-mel) backbones -> RJCA fusion.

Backbones are frozen by default (running-average BatchNorm, no gradient); a feature cache may supply
their outputs instead (`visual_features`, `audio_features` in the batch).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.audio import clip_log_mel
from affjax.models.backbones.resnet import R2Plus1D18, ResNet18
from affjax.systems.rjca.fusion import RJCAFusion

Array = jax.Array
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class RJCAModel(nn.Module):
  """Per-clip valence/arousal.

  `__call__(batch, train=...)` with batch faces `[B, L, 8, S, S, 3]` uint8, clip_audio `[B, L, N]` float32
  (right-aligned, N = (F - 1) * 160) and clip_audio_samples `[B, L]` int32, mask `[B, L]` bool (the clip
  exists; the features of a clip that does not are replaced by zeros), or visual_features `[B, L, P, 512]` /
  audio_features `[B, L, 512]` (a feature cache: `backbone_features`' outputs) in place of the first two;
  returns {'va': `[B, L, 2]` float32 (valence, arousal)}. `dtype` is the backbones' compute dtype;
  `fusion_config` holds RJCAFusion's fields.
  """

  fusion_config: Mapping[str, Any] = flax.core.FrozenDict()
  frozen: tuple[str, ...] = ('visual', 'audio')  # backbones with running-average BatchNorm and no gradient
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'  # the backbones' convolutions (`resnet.CONV_IMPLS`)

  def setup(self):  # modules in setup, so that `backbone_features` can be applied alone (feature caches)
    self.visual = R2Plus1D18(self.dtype, self.conv_impl)
    self.audio = ResNet18(self.dtype, self.conv_impl)
    self.fusion = RJCAFusion(**self.fusion_config)

  def _backbone_output(self, part: str, x: Array) -> Array:
    return jax.lax.stop_gradient(x.astype(jnp.float32)) if part in self.frozen else x.astype(jnp.float32)

  def visual_features(self, faces: Array, *, train: bool) -> Array:
    """faces `[B, L, 8, S, S, 3]` uint8 -> layer-4 positions `[B, L, (S/16)^2, 512]`."""
    b, l = faces.shape[:2]
    x = faces.reshape(b * l, *faces.shape[2:]).astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(KINETICS_MEAN)) / jnp.asarray(KINETICS_STD)
    maps = self.visual(x.astype(self.dtype), train=train and 'visual' not in self.frozen)
    return self._backbone_output('visual', maps.reshape(b, l, -1, maps.shape[-1]))

  def audio_features(self, clip_audio: Array, num_samples: Array, *, train: bool) -> Array:
    """clip_audio `[B, L, N]`, num_samples `[B, L]` -> `[B, L, 512]` (ResNet-18 over the `[64, F, 1]` log-mel)."""
    b, l = clip_audio.shape[:2]
    mel = clip_log_mel.clip_log_mel(clip_audio, num_samples)  # [B, L, F, 64]
    x = jnp.swapaxes(mel, -1, -2).reshape(b * l, mel.shape[-1], mel.shape[-2], 1)
    maps = self.audio(x.astype(self.dtype), train=train and 'audio' not in self.frozen)
    return self._backbone_output('audio', maps.astype(jnp.float32).mean(axis=(1, 2)).reshape(b, l, -1))

  def backbone_features(self, batch: Mapping[str, Array], *, train: bool = False) -> dict[str, Array]:
    """{'visual': `[B, L, P, 512]`, 'audio': `[B, L, 512]`} float32 of a batch of faces and clip audio (the
    entries a batch may give instead: what a feature cache stores per clip)."""
    return dict(visual=self.visual_features(batch['faces'], train=train),
                audio=self.audio_features(batch['clip_audio'], batch['clip_audio_samples'], train=train))

  def __call__(self, batch: Mapping[str, Array], *, train: bool) -> dict[str, Array]:
    visual = batch.get('visual_features')
    if visual is None:
      visual = self.visual_features(batch['faces'], train=train)
    audio = batch.get('audio_features')
    if audio is None:
      audio = self.audio_features(batch['clip_audio'], batch['clip_audio_samples'], train=train)
    exists = batch['mask']  # clips past the video's end enter the fusion as zeros, computed or cached alike
    visual, audio = jnp.where(exists[..., None, None], visual, 0.0), jnp.where(exists[..., None], audio, 0.0)
    return {'va': self.fusion(audio, visual, exists, train=train)}
