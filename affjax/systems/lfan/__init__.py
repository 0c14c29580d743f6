"""Leader-follower attentive fusion (Zhang et al., ABAW2 2021; spec lfan): IR-50 face CNN and causal TCNs over
300-frame windows, MFCC and VGGish followers, trained by the epoch recipe with gradual release, 6-fold
cross-validation merged by CCC centering. Config: configs/lfan.py.

Its extras: `followers` (VGGish feature records, follower statistics: the `prepare` hook), `cross_validation`
(training the folds, scoring them) and `merge` (CCC centering of the folds' predictions)."""
from __future__ import annotations

import flax.linen as nn
import ml_collections

from affjax import systems
from affjax.models.audio import mfcc
from affjax.models.backbones import ir50
from affjax.models.layers import lookup
from affjax.systems.lfan import convert, followers as followers_lib, model as lfan_model

ConfigDict = ml_collections.ConfigDict


def build(cfg: ConfigDict, compat: ConfigDict) -> nn.Module:
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
                       'filled with the training partition\'s statistics by affjax.systems.lfan.followers.prepare')
    mean, std = cfg.feature_norm[name]
    if not std > 0:
      raise ValueError(f'config.model.feature_norm.{name}={(mean, std)}: the standard deviation must be > 0')
    norm[name] = (float(mean), float(std))
  return lfan_model.LFAN(
      followers=followers, visual_channels=tuple(cfg.visual_channels), follower_channels=tuple(cfg.follower_channels),
      kernel_size=cfg.kernel_size, tcn_dropout=cfg.tcn_dropout, fusion_dim=cfg.fusion_dim,
      emotion=systems.field(cfg, 'emotion', lfan_model.EMOTIONS), released=cfg.released,
      ir50_units=tuple(cfg.ir50_units), feature_norm=norm,
      compat_follower_qv_from_key=compat.follower_qv_from_key, compat_frozen_bn_train_mode=compat.frozen_bn_train_mode,
      dtype=systems.dtype(cfg))


def validate(config: ConfigDict) -> None:
  """The model's fields, built before any record or feature exists: the follower statistics a run computes from its
  records (`model.feature_norm` entries left `()`, `followers.prepare`) stand in as (0, 1)."""
  model = config.model.copy_and_resolve_references()
  for name, value in model.feature_norm.items():
    if not tuple(value):
      model.feature_norm[name] = (0.0, 1.0)
  build(model, config.compat)


def param_labels(cfg: ConfigDict):
  """The gradual release's labels: the IR-50 groups not released yet are 'frozen'."""
  return lfan_model.make_param_labels(cfg.released, tuple(cfg.ir50_units))


SYSTEM = systems.System(names=('lfan',), build=build, validate=validate, param_labels=param_labels,
                        prepare=followers_lib.prepare, release_groups=len(ir50.RELEASE_GROUPS),
                        side_shapes=followers_lib.side_shapes, side_features=followers_lib.side_features,
                        trained_config=followers_lib.saved_statistics, upstream_converters=convert.UPSTREAM)
