"""The whole per-frame audio-visual model: backbones (time-distributed) -> fusion -> V/A head (+ 24-class head)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.backbones.audio1d import AUDIO_CNN_TABLES, AudioCNN1D
from affjax.models.backbones.inception_resnet_v1 import InceptionResnetV1
from affjax.models.backbones.mobilefacenet import MobileFaceNet
from affjax.models.backbones.vggface2_resnet import VGGFace2ResNet50
from affjax.models.audio.frame_windows import slice_audio_windows
from affjax.models.layers import lookup, torch_dense
from affjax.systems.audio_visual.cross_attn import CrossModalFusion
from affjax.systems.audio_visual.lstm import LSTMFusion
from affjax.systems.audio_visual.self_attn import SelfAttentionFusion

Array = jax.Array

MODALITIES = ('audio', 'visual')
# name (as tools/convert_torch.py --network) -> the backbone module for an AudioVisualModel `m`: [N, S, S, 3] -> [N, F]
VISUAL_BACKBONES = {
    'mobilefacenet': lambda m: MobileFaceNet(m.dtype, m.depthwise_impl, name='visual'),  # F 512, S 112
    'inceptionresnetv1': lambda m: InceptionResnetV1(dtype=m.dtype, name='visual'),  # F 512 (L2-normalised)
    'vggface2_resnet50': lambda m: VGGFace2ResNet50(compat_rgb01_norm=m.compat_vggface2_rgb01_norm, dtype=m.dtype,
                                                    name='visual'),  # F 2048, S >= 195
    'vggface2_senet50': lambda m: VGGFace2ResNet50(se=True, compat_rgb01_norm=m.compat_vggface2_rgb01_norm,
                                                   dtype=m.dtype, name='visual'),
}
AUDIO_BACKBONES = tuple(AUDIO_CNN_TABLES)
FUSIONS = {'cross_attn': CrossModalFusion, 'self_attn': SelfAttentionFusion, 'lstm': LSTMFusion}


class VAHead(nn.Module):
  """Valence/arousal per frame, `[..., D] -> [..., 2]` (float32): a Dense(2) regression, or with
  `num_bins > 1` logits over `num_bins` bins per dimension whose softmax weights linspace(-1, 1, num_bins)."""

  num_bins: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    logits = torch_dense(2 * self.num_bins, x.shape[-1], dtype=jnp.float32, name='dense')(x)
    if self.num_bins == 1:
      return logits
    probs = jax.nn.softmax(logits.reshape(*logits.shape[:-1], 2, self.num_bins), axis=-1)
    return probs @ jnp.linspace(-1.0, 1.0, self.num_bins)


class AudioVisualModel(nn.Module):
  """Per-frame valence/arousal model.

  `__call__(batch, train=...)` with batch
    faces `[B, T, S, S, 3]` uint8, audio `[B, L]` float32 (one contiguous segment per sequence),
    audio_offsets `[B, T]` int32, mask `[B, T]` bool (frame exists; False = padding)
  returns {'va': `[B, T, 2]` float32 (valence, arousal)} plus 'cat': `[B, T, aux_classes]` logits of the
  discretised auxiliary head when `aux_classes > 0`. Only the backbones of `modalities` are built, and
  only their inputs need to be in the batch; with `<part>_features [B, T, F]` in the batch (a feature
  cache) that backbone is not built and the features are used instead. Backbones named in `frozen` run in
  inference mode (BatchNorm running averages, no dropout) under `stop_gradient`; the optimiser's mask keeps
  their parameters fixed.
  """

  modalities: tuple[str, ...] = MODALITIES
  visual_backbone: str = 'mobilefacenet'
  audio_backbone: str = 'zhao19'
  audio_window: int = 10560
  depthwise_impl: str = 'auto'
  compat_vggface2_rgb01_norm: bool = False  # rnn_attn bug 7: the reference's VGGFace2 input normalisation
  fusion_name: str = 'cross_attn'
  fusion: Mapping[str, Any] = flax.core.FrozenDict()
  num_bins: int = 1
  aux_classes: int = 0
  frozen: tuple[str, ...] = ()
  dtype: Any = jnp.float32

  def _backbone(self, part: str, module: nn.Module, x: Array, train: bool, mask: Array) -> Array:
    if part in self.frozen:
      return jax.lax.stop_gradient(module(x, train=False, mask=mask))
    return module(x, train=train, mask=mask)

  @nn.compact
  def __call__(self, batch: Mapping[str, Array], *, train: bool) -> dict[str, Array]:
    for m in self.modalities:
      lookup(MODALITIES, m, 'modalities')
    mask = batch['mask']
    b, t = mask.shape
    flat_mask = mask.reshape(b * t)
    audio_feat = visual_feat = None
    if 'visual' in self.modalities and 'visual_features' in batch:  # from a feature cache of the frozen backbone
      visual_feat = batch['visual_features'].astype(self.dtype)
    elif 'visual' in self.modalities:
      make_backbone = lookup(VISUAL_BACKBONES, self.visual_backbone, 'visual_backbone')
      faces = batch['faces']
      images = faces.reshape(b * t, *faces.shape[2:]).astype(self.dtype) / 255.0
      feat = self._backbone('visual', make_backbone(self), images, train, flat_mask)
      visual_feat = feat.reshape(b, t, -1)
    if 'audio' in self.modalities and 'audio_features' in batch:
      audio_feat = batch['audio_features'].astype(self.dtype)
    elif 'audio' in self.modalities:
      table = lookup(AUDIO_CNN_TABLES, self.audio_backbone, 'audio_backbone')
      windows = slice_audio_windows(batch['audio'], batch['audio_offsets'], self.audio_window)
      feat = self._backbone('audio', AudioCNN1D(table, self.dtype, name='audio'),
                            windows.reshape(b * t, self.audio_window), train, flat_mask)
      audio_feat = feat.reshape(b, t, -1)
    fusion = lookup(FUSIONS, self.fusion_name, 'fusion_name')
    x = fusion(**self.fusion, dtype=self.dtype, name='fusion')(audio_feat, visual_feat, mask, train=train)
    out = {'va': VAHead(self.num_bins, name='va')(x)}
    if self.aux_classes:
      out['cat'] = torch_dense(self.aux_classes, x.shape[-1], dtype=jnp.float32, name='cat')(x.astype(jnp.float32))
    return out
