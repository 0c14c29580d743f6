"""The audio-visual study's systems (Karas et al., ABAW3 2022; spec rnn_attn): per-frame face and audio backbones,
then the fusion `config.model.name` names (lstm | self_attn | cross_attn), then the valence/arousal head and the
optional auxiliary 24-class head. Configs: configs/audio_visual.py and configs/{lstm,self_attn,cross_attn}.py."""
from __future__ import annotations

import flax.linen as nn
import ml_collections

from affjax import systems
from affjax.models.attention import ATTENTION_IMPLS
from affjax.systems.audio_visual import convert
from affjax.systems.audio_visual.model import AUDIO_BACKBONES, MODALITIES, VISUAL_BACKBONES, AudioVisualModel
from affjax.models.layers import ACTIVATIONS, DEPTHWISE_IMPLS, lookup

ConfigDict = ml_collections.ConfigDict


def _fusion_kwargs(cfg: ConfigDict, compat: ConfigDict) -> dict[str, object]:
  """The fusion module's fields for `cfg.name` (cross_attn | self_attn | lstm)."""
  common = dict(d_embedding=cfg.d_embedding, dropout=cfg.dropout, act=systems.field(cfg, 'act', ACTIVATIONS))
  if cfg.name == 'lstm':
    return dict(common, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional)
  attention = dict(common, d_ff=cfg.d_ff, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
                   attention_impl=systems.field(cfg, 'attention_impl', ATTENTION_IMPLS))
  if cfg.name == 'self_attn':
    return attention
  return dict(attention, n_ca=cfg.n_ca, n_cv=cfg.n_cv, gated=cfg.gated,
              compat_reference_layers=compat.multv2_reference_layers)


def build(cfg: ConfigDict, compat: ConfigDict) -> nn.Module:
  """Per-frame backbones + the fusion `cfg.name` names + heads."""
  modalities = tuple(cfg.modalities)
  if not modalities:
    raise ValueError('config.model.modalities is empty')
  for i, m in enumerate(modalities):
    lookup(MODALITIES, m, f'config.model.modalities[{i}]')
  for i, part in enumerate(cfg.frozen):
    lookup(modalities, part, f'config.model.frozen[{i}]')
  return AudioVisualModel(
      modalities=modalities,
      visual_backbone=systems.field(cfg, 'visual_backbone', VISUAL_BACKBONES),
      audio_backbone=systems.field(cfg, 'audio_backbone', AUDIO_BACKBONES),
      audio_window=cfg.audio_window,
      depthwise_impl=systems.field(cfg, 'depthwise_impl', DEPTHWISE_IMPLS),
      compat_vggface2_rgb01_norm=compat.vggface2_rgb01_norm,
      fusion_name=cfg.name,
      fusion=_fusion_kwargs(cfg, compat),
      num_bins=cfg.num_bins,
      aux_classes=cfg.aux_classes,
      frozen=tuple(cfg.frozen),
      dtype=systems.dtype(cfg))


def validate(config: ConfigDict) -> None:
  """The face size each visual backbone needs and the auxiliary head its loss needs, then the model's fields."""
  model, data = config.model, config.data
  if 'visual' in tuple(model.modalities):
    if model.visual_backbone == 'mobilefacenet' and data.image_size != 112:
      raise ValueError(f'config.data.image_size={data.image_size!r} is invalid: MobileFaceNet needs 112x112 faces: '
                       'set config.data.image_size=112')
    if model.visual_backbone.startswith('vggface2_') and data.image_size < 195:
      raise ValueError(f'config.data.image_size={data.image_size!r} is invalid: the VGGFace2 ResNets need faces of '
                       'at least 195 px (native 224): set config.data.image_size=224')
  if (config.loss.aux_weight > 0 or config.compat.arousal_ccc_on_cat_logit) and model.aux_classes != 24:
    raise ValueError(f'config.model.aux_classes={model.aux_classes!r} is invalid: must be 24 when '
                     'config.loss.aux_weight > 0 or config.compat.arousal_ccc_on_cat_logit is set (the auxiliary '
                     '24-class head: the `aux` variant of configs/audio_visual.py)')
  build(config.model, config.compat)


SYSTEM = systems.System(names=('lstm', 'self_attn', 'cross_attn'), build=build, validate=validate,
                        aux_classes=lambda cfg: cfg.aux_classes, upstream_converters=convert.UPSTREAM)
