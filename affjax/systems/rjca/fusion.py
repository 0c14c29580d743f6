"""Recursive joint cross-attention fusion (RJCA, Praveen et al. 2023; `../shared/specs/rjca.md` §3).

Per window of L clips: audio embeddings `[B, L, 512]` and visual layer-4 maps `[B, L, 49, 512]`
(positions x channels) -> per-clip (valence, arousal) `[B, L, 2]`:
L2 norm -> audio BLSTM block -> audio-guided spatial attention over the 49 positions -> visual BLSTM
block -> K joint co-attention iterations -> joint BLSTM block on [visual, audio] -> valence and arousal heads.
Dense layers are Xavier-uniform with zero bias; LSTMs use PyTorch's init (`temporal.LSTM`).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.temporal import LSTM

Array = jax.Array


def xavier_dense(features: int, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=nn.initializers.xavier_uniform(),
                  bias_init=nn.initializers.zeros, name=name)


def l2_normalize(x: Array, axis=-1, eps: float = 1e-12) -> Array:
  """x / max(||x||_2, eps) over `axis` (PyTorch F.normalize), written so that the gradient at x = 0 (a padding
  clip's zero features) is finite: d sqrt(s) / ds is infinite at 0."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def scrambled_spatial_view(visual: Array) -> Array:
  """The reference's view of a layer-4 map (spec B2): `[..., P, C]` flattened channel-major (C, H, W) and
  read back as `[..., P, C]`, so that a "position" mixes ~C/P channels of every position."""
  *lead, p, c = visual.shape
  return jnp.swapaxes(visual, -1, -2).reshape(*lead, p, c)


class BLSTMBlock(nn.Module):
  """`y = L2norm(Dense(D)(Dropout(cat[x, BiLSTM(x)])))`: a 2-layer BiLSTM of D/2 units per direction with
  learned initial states and inter-layer dropout, `[B, L, E]` -> `[B, L, D]`."""

  features: int = 512
  dropout: float = 0.0
  num_layers: int = 2

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, *, train: bool) -> Array:
    h = LSTM(self.features // 2, self.num_layers, bidirectional=True, dropout=self.dropout,
             learned_initial_state=True, name='lstm')(x, mask, train=train)
    y = nn.Dropout(self.dropout, deterministic=not train)(jnp.concatenate([x, h], axis=-1))
    return l2_normalize(xavier_dense(self.features, 'linear')(y))


class AudioGuidedSpatialAttention(nn.Module):
  """Attention over the P positions of each clip's visual map, guided by its audio embedding.

  visual `[B, L, P, C]`, audio `[B, L, Da]` -> `[B, L, features]`:
  `z_p = w_z . tanh(W_v relu(Dense(v_p)) + W_a relu(Dense(a)))`, `alpha = softmax_p(z)`,
  `out = Dense(sum_p alpha_p v_p)`. W_v, W_a map to `hidden` units (no bias). With
  `compat_audio_on_position_axis` (spec B3) the `hidden` values of W_a g are added along the position
  axis instead (needs hidden == P).
  """

  features: int = 512
  hidden: int = 49
  compat_audio_on_position_axis: bool = False

  @nn.compact
  def __call__(self, visual: Array, audio: Array) -> Array:
    v = nn.relu(xavier_dense(self.features, 'affine_video')(visual))
    g = nn.relu(xavier_dense(self.features, 'affine_audio')(audio))
    hv = xavier_dense(self.hidden, 'affine_v', use_bias=False)(v)  # [B, L, P, hidden]
    ha = xavier_dense(self.hidden, 'affine_g', use_bias=False)(g)  # [B, L, hidden]
    if self.compat_audio_on_position_axis:
      if self.hidden != visual.shape[-2]:
        raise ValueError(f'compat.audio_guidance_on_position_axis needs hidden == positions, got {self.hidden} '
                         f'and {visual.shape[-2]}')
      content = hv + ha[..., :, None]
    else:
      content = hv + ha[..., None, :]
    z = xavier_dense(1, 'affine_h', use_bias=False)(jnp.tanh(content))[..., 0]  # [B, L, P]
    alpha = jax.nn.softmax(z, axis=-1)
    return xavier_dense(self.features, 'affine_feat')(jnp.einsum('blp,blpc->blc', alpha, visual))


class JointCoAttentionLayer(nn.Module):
  """One joint co-attention iteration over X_v `[B, L, Dv]`, X_a `[B, L, Da]` (spec §3.5), both updated
  from the same inputs:
  J = W_q [X_v; X_a] + b; C_m = Drop(tanh(Dense_L(X_m^T) J / sqrt(Dv + Da))) `[B, D_m, Dv + Da]`;
  H_m = relu(tanh(Dense(X_m) C_m)); X_m <- X_m + Drop(relu(Dense_{D_m}(H_m))).
  """

  dropout: float = 0.6

  @nn.compact
  def __call__(self, xv: Array, xa: Array, *, train: bool) -> tuple[Array, Array]:
    joint = jnp.concatenate([xv, xa], axis=-1)
    dj, length = joint.shape[-1], joint.shape[-2]
    joint = xavier_dense(dj, 'query')(joint)
    out = []
    for name, x in (('visual', xv), ('audio', xa)):
      key = xavier_dense(length, f'key_{name}')(jnp.swapaxes(x, -1, -2))  # [B, D_m, L]
      corr = jnp.tanh(jnp.einsum('bdl,blj->bdj', key, joint) / math.sqrt(dj))
      corr = nn.Dropout(self.dropout, deterministic=not train)(corr)
      value = xavier_dense(x.shape[-1], f'value_{name}')(x)
      h = nn.relu(jnp.tanh(jnp.einsum('bld,bdj->blj', value, corr)))
      update = nn.relu(xavier_dense(x.shape[-1], f'out_{name}')(h))
      out.append(x + nn.Dropout(self.dropout, deterministic=not train)(update))
    return out[0], out[1]


class JointCrossAttention(nn.Module):
  """`num_iterations` joint co-attention layers applied in turn (K = 1 is JCA), with their own weights
  (`iteration{r}`) unless `share_weights` (one layer, `iteration0`, applied K times)."""

  num_iterations: int = 3
  share_weights: bool = False
  dropout: float = 0.6

  @nn.compact
  def __call__(self, xv: Array, xa: Array, *, train: bool) -> tuple[Array, Array]:
    if self.num_iterations < 1:
      raise ValueError(f'num_iterations={self.num_iterations} must be >= 1')
    layers = [JointCoAttentionLayer(self.dropout, name=f'iteration{r}')
              for r in range(1 if self.share_weights else self.num_iterations)]
    for r in range(self.num_iterations):
      xv, xa = layers[0 if self.share_weights else r](xv, xa, train=train)
    return xv, xa


class RJCAFusion(nn.Module):
  """audio `[B, L, Da]`, visual `[B, L, P, C]` (layer-4 positions x channels), mask `[B, L]` (clip exists)
  -> per-clip (valence, arousal) `[B, L, 2]` float32 (no output activation)."""

  num_iterations: int = 3
  share_iteration_weights: bool = False
  features: int = 512
  lstm_dropout: float = 0.1
  attention_dropout: float = 0.6
  head_dropout: float = 0.6
  compat_scrambled_spatial_view: bool = False
  compat_audio_guidance_on_position_axis: bool = False

  @nn.compact
  def __call__(self, audio: Array, visual: Array, mask: Array | None = None, *, train: bool) -> Array:
    audio = l2_normalize(audio.astype(jnp.float32))
    visual = l2_normalize(visual.astype(jnp.float32), axis=(-2, -1))
    if self.compat_scrambled_spatial_view:
      visual = scrambled_spatial_view(visual)
    a = BLSTMBlock(self.features, self.lstm_dropout, name='audio_blstm')(audio, mask, train=train)
    v = AudioGuidedSpatialAttention(
        self.features, compat_audio_on_position_axis=self.compat_audio_guidance_on_position_axis,
        name='spatial_attention')(visual, a)
    v = BLSTMBlock(self.features, self.lstm_dropout, name='visual_blstm')(v, mask, train=train)
    v, a = JointCrossAttention(self.num_iterations, self.share_iteration_weights, self.attention_dropout,
                               name='coattention')(v, a, train=train)
    h = BLSTMBlock(self.features, 0.0, name='joint_blstm')(jnp.concatenate([v, a], axis=-1), mask, train=train)
    outputs = []
    for name in ('valence', 'arousal'):
      y = nn.relu(xavier_dense(128, f'{name}_hidden')(h))
      y = nn.Dropout(self.head_dropout, deterministic=not train)(y)
      outputs.append(xavier_dense(1, f'{name}_out')(y)[..., 0])
    return jnp.stack(outputs, axis=-1)
