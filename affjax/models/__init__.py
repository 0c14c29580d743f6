"""Model registry: `build_model(config.model)` maps `config.model.name` to a Linen module."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from affjax.data import audio_features
from affjax.models import lfan_model
from affjax.models.attention import ATTENTION_IMPLS
from affjax.models.av_model import AUDIO_BACKBONES, MODALITIES, VISUAL_BACKBONES, AudioVisualModel
from affjax.models.layers import ACTIVATIONS, DEPTHWISE_IMPLS, lookup

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _field(cfg: ml_collections.ConfigDict, name: str, allowed) -> object:
  """cfg[name], validated against the names in `allowed`."""
  return lookup(tuple(allowed), cfg[name], f'config.model.{name}')


def _build_cross_attn(cfg: ml_collections.ConfigDict) -> nn.Module:
  modalities = tuple(cfg.modalities)
  if not modalities:
    raise ValueError('config.model.modalities is empty')
  for i, m in enumerate(modalities):
    lookup(MODALITIES, m, f'config.model.modalities[{i}]')
  fusion = dict(
      d_embedding=cfg.d_embedding, d_ff=cfg.d_ff, num_heads=cfg.num_heads, n_ca=cfg.n_ca, n_cv=cfg.n_cv,
      num_layers=cfg.num_layers, dropout=cfg.dropout, act=_field(cfg, 'act', ACTIVATIONS),
      gated=cfg.gated, compat_reference_layers=cfg.compat_reference_layers,
      attention_impl=_field(cfg, 'attention_impl', ATTENTION_IMPLS))
  return AudioVisualModel(
      modalities=modalities,
      visual_backbone=_field(cfg, 'visual_backbone', VISUAL_BACKBONES),
      audio_backbone=_field(cfg, 'audio_backbone', AUDIO_BACKBONES),
      audio_window=cfg.audio_window,
      depthwise_impl=_field(cfg, 'depthwise_impl', DEPTHWISE_IMPLS),
      fusion=fusion,
      dtype=DTYPES[_field(cfg, 'dtype', DTYPES)])


def _build_lfan(cfg: ml_collections.ConfigDict) -> nn.Module:
  followers = tuple(cfg.followers)
  for i, m in enumerate(followers):
    lookup(lfan_model.FOLLOWERS, m, f'config.model.followers[{i}]')
  if 'mfcc' in followers and cfg.audio_window != audio_features.FRAME_MFCC_SAMPLES:
    raise ValueError(f'config.data.audio_window={cfg.audio_window}: the MFCC follower needs '
                     f'{audio_features.FRAME_MFCC_SAMPLES} samples per frame; set it to that')
  norm = {}
  for name in followers:
    mean, std = cfg.feature_norm[name]
    if not std > 0:
      raise ValueError(f'config.model.feature_norm.{name}={(mean, std)}: the standard deviation must be > 0')
    norm[name] = (float(mean), float(std))
  return lfan_model.LFAN(
      followers=followers, visual_channels=tuple(cfg.visual_channels), follower_channels=tuple(cfg.follower_channels),
      kernel_size=cfg.kernel_size, tcn_dropout=cfg.tcn_dropout, fusion_dim=cfg.fusion_dim,
      emotion=_field(cfg, 'emotion', lfan_model.EMOTIONS), released=cfg.released, ir50_units=tuple(cfg.ir50_units),
      feature_norm=norm,
      compat_follower_qv_from_key=cfg.compat_follower_qv_from_key,
      compat_frozen_bn_train_mode=cfg.compat_frozen_bn_train_mode, dtype=DTYPES[_field(cfg, 'dtype', DTYPES)])


MODELS: dict[str, Callable[[ml_collections.ConfigDict], nn.Module]] = {
    'cross_attn': _build_cross_attn,
    'lfan': _build_lfan,
}


def param_labels(model_config: ml_collections.ConfigDict) -> Callable | None:
  """`params -> {'train', 'frozen'} labels` for models with frozen layers (LFAN's gradual release), else None."""
  if model_config.name == 'lfan':
    return lfan_model.make_param_labels(model_config.released, tuple(model_config.ir50_units))
  return None


def build_model(model_config: ml_collections.ConfigDict) -> nn.Module:
  """The Linen module `model_config.name` names, built from the config's fields; unknown names raise
  ValueError naming the field (e.g. "config.model.visual_backbone='x' is not one of [...]")."""
  return MODELS[_field(model_config, 'name', MODELS)](model_config)
