"""The LFAN model (spec lfan 2): IR-50 faces -> visual TCN (leader), audio features -> TCNs (followers),
leader-follower fusion, linear valence/arousal regressor. Everything is causal along time.

  faces  [B,T,40,40,3] -> IR-50 (time-distributed) [B,T,512] -> TCN 512 -> [128]*4        h_v [B,T,128]
  vggish [B,T,128] (precomputed, `affjax.systems.lfan.followers`) -> z-score -> TCN -> [32]*4  h_1 [B,T,32]
  mfcc   [B,T,39] (computed here from the window's audio)    -> z-score -> TCN -> [32]*4  h_2 [B,T,32]
  fusion(h_v, followers) [B,T,128 + 32 (1 + M)] -> Dense -> [B,T,2]
With no followers (`followers=()`) the regressor reads h_v alone (the unimodal `my_2d1d`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.audio import mfcc
from affjax.models.audio.frame_windows import slice_audio_windows
from affjax.models.backbones import ir50
from affjax.systems.lfan.fusion import LeaderFollowerFusion
from affjax.models.layers import torch_dense
from affjax.models.tcn import TemporalConvNet

Array = jax.Array

FOLLOWERS = ('vggish', 'mfcc')
EMOTIONS = ('both', 'valence', 'arousal')


class LFAN(nn.Module):
  """`__call__(batch, train=...)` -> {'va': `[B, T, 2]` float32 (valence, arousal)}.

  batch: faces `[B, T, S, S, 3]` uint8 (S = 40 as the paper), mask `[B, T]` bool (False = padding), for the
  'vggish' follower vggish_features `[B, T, 128]` (raw VGGish embeddings of each frame's 0.96 s example), and for
  the 'mfcc' follower audio `[B, L]` float32 with audio_offsets `[B, T]` int32 (frame t's centred window of
  `mfcc.FRAME_MFCC_SAMPLES` samples starts there). Followers are fused in the order of `followers`
  (the paper: VGGish, then MFCC). `feature_norm` maps a follower to its (mean, std),
  scalars from the training partition. `emotion` 'valence' or 'arousal' builds one regressor output (the paper:
  one model per emotion) and leaves the other column zero.
  """

  followers: Sequence[str] = FOLLOWERS
  visual_channels: Sequence[int] = (128, 128, 128, 128)
  follower_channels: Sequence[int] = (32, 32, 32, 32)
  kernel_size: int = 5
  tcn_dropout: float = 0.1
  fusion_dim: int = 32
  emotion: str = 'both'
  released: int = 1
  ir50_units: tuple[int, ...] = ir50.IR50_UNITS
  feature_norm: Mapping[str, tuple[float, float]] = None
  compat_follower_qv_from_key: bool = False
  compat_frozen_bn_train_mode: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch: Mapping[str, Array], *, train: bool) -> dict[str, Array]:
    mask = batch['mask']
    b, t = mask.shape
    faces = batch['faces']
    emb = ir50.IR50(self.released, self.compat_frozen_bn_train_mode, self.dtype, tuple(self.ir50_units), name='visual')(
        faces.reshape(b * t, *faces.shape[2:]), train=train, mask=mask.reshape(b * t))
    h_v = TemporalConvNet(self.visual_channels, self.kernel_size, self.tcn_dropout, self.dtype, name='visual_tcn')(
        emb.reshape(b, t, -1), train=train)
    hs = []
    for name in self.followers:
      feat = self._follower_features(name, batch)
      mean, std = (self.feature_norm or {}).get(name, (0.0, 1.0))
      feat = (feat - mean) / std
      hs.append(TemporalConvNet(self.follower_channels, self.kernel_size, self.tcn_dropout, self.dtype,
                                name=f'{name}_tcn')(feat, train=train))
    x = LeaderFollowerFusion(self.fusion_dim, self.compat_follower_qv_from_key, name='fusion')(h_v, hs) if hs else h_v
    x = x.astype(jnp.float32)
    if self.emotion == 'both':
      return {'va': torch_dense(2, x.shape[-1], name='regressor')(x)}
    y = torch_dense(1, x.shape[-1], name='regressor')(x)
    zeros = jnp.zeros_like(y)
    return {'va': jnp.concatenate([y, zeros] if self.emotion == 'valence' else [zeros, y], axis=-1)}

  def _follower_features(self, name: str, batch: Mapping[str, Array]) -> Array:
    """`[B, T, D]` float32 features of one follower modality."""
    if name == 'mfcc':
      windows = slice_audio_windows(batch['audio'], batch['audio_offsets'], mfcc.FRAME_MFCC_SAMPLES)
      return mfcc.frame_mfcc(windows)
    if name == 'vggish':
      if 'vggish_features' not in batch:
        raise ValueError('the VGGish follower reads vggish_features from a feature cache joined to the frame records: '
                         'set config.data.side_features_dir (tools/vggish_features.py), or run through affjax.main, '
                         'which builds it')
      return batch['vggish_features'].astype(jnp.float32)
    raise ValueError(f'unknown LFAN follower {name!r}; known: {FOLLOWERS}')


def make_param_labels(released: int, ir50_units: tuple[int, ...] = ir50.IR50_UNITS):
  """`params -> labels` for `optax.multi_transform`: 'frozen' for the IR-50 layers that `released` groups leave
  frozen, 'train' for everything else."""
  first = ir50.first_trainable_unit(released, tuple(ir50_units))

  def label(name: str) -> str:
    trains = name.startswith('head') and released >= 1 or name.startswith('unit') and int(name[4:]) >= first
    return 'train' if trains else 'frozen'

  def labels(params):
    out = jax.tree.map(lambda _: 'train', dict(params))
    out['visual'] = {name: jax.tree.map(lambda _: label(name), sub) for name, sub in params['visual'].items()}
    return out

  return labels
