"""Model registry: `build_model(config.model, config.compat)` maps `config.model.name` to a Linen module."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from affjax.models import lfan_model, sparse_stages
from affjax.models.attention import ATTENTION_IMPLS
from affjax.models.audio import mfcc
from affjax.models.av_model import AUDIO_BACKBONES, MODALITIES, VISUAL_BACKBONES, AudioVisualModel
from affjax.models.backbones.resnet import CONV_IMPLS
from affjax.models.layers import ACTIVATIONS, DEPTHWISE_IMPLS, lookup
from affjax.models.rjca_model import RJCAModel
from affjax.models.sparse_e2e_model import QUERIES, SparseAVModel

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _field(cfg: ml_collections.ConfigDict, name: str, allowed) -> object:
  """cfg[name], validated against the names in `allowed`."""
  return lookup(tuple(allowed), cfg[name], f'config.model.{name}')


def _fusion_kwargs(cfg: ml_collections.ConfigDict, compat: ml_collections.ConfigDict) -> dict[str, object]:
  """The fusion module's fields for `cfg.name` (cross_attn | self_attn | lstm)."""
  common = dict(d_embedding=cfg.d_embedding, dropout=cfg.dropout, act=_field(cfg, 'act', ACTIVATIONS))
  if cfg.name == 'lstm':
    return dict(common, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional)
  attention = dict(common, d_ff=cfg.d_ff, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
                   attention_impl=_field(cfg, 'attention_impl', ATTENTION_IMPLS))
  if cfg.name == 'self_attn':
    return attention
  return dict(attention, n_ca=cfg.n_ca, n_cv=cfg.n_cv, gated=cfg.gated,
              compat_reference_layers=compat.multv2_reference_layers)


def _build_audio_visual(cfg: ml_collections.ConfigDict, compat: ml_collections.ConfigDict) -> nn.Module:
  """Per-frame backbones + the fusion `cfg.name` names + heads (the Karas et al. study's models)."""
  modalities = tuple(cfg.modalities)
  if not modalities:
    raise ValueError('config.model.modalities is empty')
  for i, m in enumerate(modalities):
    lookup(MODALITIES, m, f'config.model.modalities[{i}]')
  for i, part in enumerate(cfg.frozen):
    lookup(modalities, part, f'config.model.frozen[{i}]')
  return AudioVisualModel(
      modalities=modalities,
      visual_backbone=_field(cfg, 'visual_backbone', VISUAL_BACKBONES),
      audio_backbone=_field(cfg, 'audio_backbone', AUDIO_BACKBONES),
      audio_window=cfg.audio_window,
      depthwise_impl=_field(cfg, 'depthwise_impl', DEPTHWISE_IMPLS),
      compat_vggface2_rgb01_norm=compat.vggface2_rgb01_norm,
      fusion_name=cfg.name,
      fusion=_fusion_kwargs(cfg, compat),
      num_bins=cfg.num_bins,
      aux_classes=cfg.aux_classes,
      frozen=tuple(cfg.frozen),
      dtype=DTYPES[_field(cfg, 'dtype', DTYPES)])


def _build_rjca(cfg: ml_collections.ConfigDict, compat: ml_collections.ConfigDict) -> nn.Module:
  fusion = dict(
      num_iterations=cfg.num_iterations, share_iteration_weights=cfg.share_iteration_weights,
      features=cfg.features, lstm_dropout=cfg.lstm_dropout, attention_dropout=cfg.attention_dropout,
      head_dropout=cfg.head_dropout, compat_scrambled_spatial_view=compat.scrambled_spatial_view,
      compat_audio_guidance_on_position_axis=compat.audio_guidance_on_position_axis)
  if cfg.num_iterations < 1:
    raise ValueError(f'config.model.num_iterations={cfg.num_iterations} must be >= 1 (1 = JCA)')
  return RJCAModel(fusion_config=fusion, frozen=tuple(cfg.frozen), dtype=DTYPES[_field(cfg, 'dtype', DTYPES)],
                   conv_impl=_field(cfg, 'conv_impl', CONV_IMPLS))


def _build_sparse_e2e(cfg: ml_collections.ConfigDict, compat: ml_collections.ConfigDict) -> nn.Module:
  del compat  # the sparse model reproduces no reference quirk
  if tuple(cfg.modalities) != MODALITIES:
    raise ValueError(f'config.model.modalities={tuple(cfg.modalities)} must be {MODALITIES}: the sparse stages of '
                     'each modality are queried by the other')
  for name in ('width', 'd_model', 'mlp_hidden', 'num_layers', 'num_heads', 'd_ff'):
    if not (isinstance(cfg[name], int) and cfg[name] > 0):
      raise ValueError(f'config.model.{name}={cfg[name]!r} must be an integer > 0')
  if cfg.image_size % 16:
    raise ValueError(f'config.data.image_size={cfg.image_size} must be a multiple of 16 for the VGG trunk (48)')
  if not 0.0 < cfg.top_p <= 1.0:
    raise ValueError(f'config.model.top_p={cfg.top_p!r} must be in (0, 1]')
  warmup = cfg.top_p_warmup_steps
  if not (isinstance(warmup, int) and warmup >= 0):
    raise ValueError(f'config.model.top_p_warmup_steps={warmup!r} must be an integer >= 0 (0: no annealing)')
  if not 0.0 < cfg.capacity <= 1.0:
    raise ValueError(f'config.model.capacity={cfg.capacity!r} must be in (0, 1] (fraction of sites per stage)')
  return SparseAVModel(
      width=cfg.width, d_model=cfg.d_model, mlp_hidden=cfg.mlp_hidden, sparse=cfg.sparse,
      sparse_impl=_field(cfg, 'sparse_impl', sparse_stages.SPARSE_IMPLS), top_p=cfg.top_p, top_p_warmup_steps=warmup,
      capacity=cfg.capacity, scma_grad=_field(cfg, 'scma_grad', sparse_stages.SCMA_GRADS),
      query=_field(cfg, 'query', QUERIES), num_layers=cfg.num_layers, num_heads=cfg.num_heads, d_ff=cfg.d_ff,
      dropout=cfg.dropout, dtype=DTYPES[_field(cfg, 'dtype', DTYPES)])


def _build_lfan(cfg: ml_collections.ConfigDict, compat: ml_collections.ConfigDict) -> nn.Module:
  followers = tuple(cfg.followers)
  for i, m in enumerate(followers):
    lookup(lfan_model.FOLLOWERS, m, f'config.model.followers[{i}]')
  if 'mfcc' in followers and cfg.audio_window != mfcc.FRAME_MFCC_SAMPLES:
    raise ValueError(f'config.data.audio_window={cfg.audio_window}: the MFCC follower needs '
                     f'{mfcc.FRAME_MFCC_SAMPLES} samples per frame; set it to that')
  norm = {}
  for name in followers:
    if name not in cfg.feature_norm or len(cfg.feature_norm[name]) != 2:
      raise ValueError(f'config.model.feature_norm.{name}={cfg.feature_norm.get(name)!r}: needs (mean, std); () is '
                       'filled with the training partition\'s statistics by affjax.follower_features.prepare')
    mean, std = cfg.feature_norm[name]
    if not std > 0:
      raise ValueError(f'config.model.feature_norm.{name}={(mean, std)}: the standard deviation must be > 0')
    norm[name] = (float(mean), float(std))
  return lfan_model.LFAN(
      followers=followers, visual_channels=tuple(cfg.visual_channels), follower_channels=tuple(cfg.follower_channels),
      kernel_size=cfg.kernel_size, tcn_dropout=cfg.tcn_dropout, fusion_dim=cfg.fusion_dim,
      emotion=_field(cfg, 'emotion', lfan_model.EMOTIONS), released=cfg.released, ir50_units=tuple(cfg.ir50_units),
      feature_norm=norm,
      compat_follower_qv_from_key=compat.follower_qv_from_key, compat_frozen_bn_train_mode=compat.frozen_bn_train_mode,
      dtype=DTYPES[_field(cfg, 'dtype', DTYPES)])


MODELS: dict[str, Callable[[ml_collections.ConfigDict, ml_collections.ConfigDict], nn.Module]] = {
    'cross_attn': _build_audio_visual,
    'self_attn': _build_audio_visual,
    'lstm': _build_audio_visual,
    'rjca': _build_rjca,
    'sparse_e2e': _build_sparse_e2e,
    'lfan': _build_lfan,
}


def warmup_model(model: nn.Module, model_config: ml_collections.ConfigDict) -> tuple[nn.Module, int] | None:
  """(module, steps): what the first `steps` training steps run instead of `model` (same variables), or None.

  A sparse_e2e model with gather stages and `top_p_warmup_steps` warms up with masked-dense stages, so that its
  capacity can be annealed (a gather stage computes a fixed number of sites)."""
  if (model_config.name == 'sparse_e2e' and model_config.sparse and model_config.sparse_impl == 'gather'
      and model_config.top_p_warmup_steps):
    return model.clone(warmup_phase=True), model_config.top_p_warmup_steps
  return None


def param_labels(model_config: ml_collections.ConfigDict) -> Callable | None:
  """`params -> {'train', 'frozen'} labels` for models with frozen layers (LFAN's gradual release), else None."""
  if model_config.name == 'lfan':
    return lfan_model.make_param_labels(model_config.released, tuple(model_config.ir50_units))
  return None


def build_model(model_config: ml_collections.ConfigDict, compat: ml_collections.ConfigDict) -> nn.Module:
  """The Linen module `model_config.name` names, built from the config's fields and the reference quirks of
  `compat` (`config.compat`) its layers implement; unknown names raise ValueError naming the field (e.g.
  "config.model.visual_backbone='x' is not one of [...]")."""
  return MODELS[_field(model_config, 'name', MODELS)](model_config, compat)
