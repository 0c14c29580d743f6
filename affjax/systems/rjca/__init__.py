"""Recursive joint cross-attention (Praveen et al., ICASSP 2023; spec rjca): clip backbones (R(2+1)D-18 on faces,
ResNet-18 on log-mel), BLSTMs and K joint cross-attention iterations, on the clip view. Config: configs/rjca.py."""
from __future__ import annotations

import flax.linen as nn
import ml_collections

from affjax import systems
from affjax.models.backbones.resnet import CONV_IMPLS
from affjax.systems.rjca import convert
from affjax.systems.rjca.model import RJCAModel

ConfigDict = ml_collections.ConfigDict


def build(cfg: ConfigDict, compat: ConfigDict) -> nn.Module:
  fusion = dict(
      num_iterations=cfg.num_iterations, share_iteration_weights=cfg.share_iteration_weights,
      features=cfg.features, lstm_dropout=cfg.lstm_dropout, attention_dropout=cfg.attention_dropout,
      head_dropout=cfg.head_dropout, compat_scrambled_spatial_view=compat.scrambled_spatial_view,
      compat_audio_guidance_on_position_axis=compat.audio_guidance_on_position_axis)
  if cfg.num_iterations < 1:
    raise ValueError(f'config.model.num_iterations={cfg.num_iterations} must be >= 1 (1 = JCA)')
  return RJCAModel(fusion_config=fusion, frozen=tuple(cfg.frozen), dtype=systems.dtype(cfg),
                   conv_impl=systems.field(cfg, 'conv_impl', CONV_IMPLS))


SYSTEM = systems.System(names=('rjca',), build=build, views=('clips',), upstream_converters=convert.UPSTREAM)
