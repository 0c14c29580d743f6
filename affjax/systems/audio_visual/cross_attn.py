"""MulT-style cross-modal attention fusion (`multv2` / `gatedmultv2`, spec rnn_attn 2.3).

    audio [B,T,Fa] -> Conv1d(k3, SAME) + PE -> a0 [B,T,d/2]     visual [B,T,Fv] -> ... -> v0 [B,T,d/2]
    A->V: x <- v0; n_ca x  x = CrossModalLayer(source=a0, target=x)
    V->A: x <- a0; n_cv x  x = CrossModalLayer(source=v0, target=x)
    cat[A->V, V->A] [B,T,d] -> num_layers x PostLNEncoderLayer -> act  ->  [B,T,d]

With one modality (the other None) the cross stacks are skipped: Conv1d(k3) + PE to width d, then the
self-attention layers. Padded frames (mask False) are zeroed before the front-end convolutions and
masked as keys in every attention, so they cannot influence valid frames.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.attention import MultiHeadAttention, PostLNEncoderLayer
from affjax.models.layers import activation, sinusoidal_pe, torch_bias_init, torch_dense, torch_kernel_init

Array = jax.Array

CROSS_FFN_DROPOUT = 0.3  # fixed inside every cross-modal layer's FFN, whatever `dropout` is


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


def _gelu(x: Array) -> Array:
  return nn.gelu(x, approximate=False)


class FrontEnd(nn.Module):
  """Per-modality input projection: Conv1d(F -> features, k=3, SAME) over time, plus PE."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None) -> Array:
    """x `[B, T, F]`, mask `[B, T]` bool -> `[B, T, features]`."""
    if mask is not None:
      x = jnp.where(mask[..., None], x, 0)
    fan_in = 3 * x.shape[-1]
    x = nn.Conv(self.features, (3,), padding=((1, 1),), kernel_init=torch_kernel_init,
                bias_init=torch_bias_init(fan_in), dtype=self.dtype, name='conv')(x)
    return x + jnp.asarray(sinusoidal_pe(x.shape[1], self.features), x.dtype)


class CrossModalLayer(nn.Module):
  """One cross-modal layer, target (query) attending to source (key/value), width E = target width.

  affjax pre-LN layer:  a = MHA(LN_t(x), LN_s(s));  y = x + Drop(a);  x' = y + Drop(gelu(FFN_c(LN(y))))
  gated:                y = alpha * Drop(a) + (1 - alpha) * x, alpha a learned scalar (init 0.5)
  compat_reference:     the residual base is a instead of x (reference bug 2)
  FFN_c = Dense(d_ff) -> gelu -> Dropout(0.3) -> Dense(E); all GELUs exact.
  """

  d_ff: int
  num_heads: int
  dropout: float
  gated: bool = False
  compat_reference: bool = False
  attention_impl: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, source: Array, target: Array, *, key_mask: Array | None, train: bool) -> Array:
    width = target.shape[-1]
    a = MultiHeadAttention(self.num_heads, self.dropout, self.attention_impl, self.dtype, name='attn')(
        _layer_norm('norm_tgt', self.dtype)(target), _layer_norm('norm_src', self.dtype)(source),
        key_mask=key_mask, deterministic=not train)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    base = a if self.compat_reference else target
    if self.gated:
      alpha = self.param('alpha', nn.initializers.constant(0.5), (), jnp.float32).astype(a.dtype)
      y = alpha * drop(a) + (1 - alpha) * base
    else:
      y = drop(a) + base
    h = torch_dense(self.d_ff, width, dtype=self.dtype, name='ffn_in')(_layer_norm('norm_ffn', self.dtype)(y))
    h = nn.Dropout(CROSS_FFN_DROPOUT, deterministic=not train)(_gelu(h))
    h = torch_dense(width, self.d_ff, dtype=self.dtype, name='ffn_out')(h)
    return y + drop(_gelu(h))


class CrossModalFusion(nn.Module):
  """Cross-modal attention fusion (`multv2`; `gated=True` for `gatedmultv2`), `-> [B, T, d_embedding]`.

  `compat_reference_layers` reproduces reference bug 2: no query residual in the cross layers, and
  every layer of a stack reads the front-end outputs, so only the last layer of each stack counts.
  """

  d_embedding: int = 128
  d_ff: int = 128
  num_heads: int = 4
  n_ca: int = 4
  n_cv: int = 4
  num_layers: int = 4
  dropout: float = 0.3
  act: str = 'gelu'
  gated: bool = False
  compat_reference_layers: bool = False
  attention_impl: str | None = None
  dtype: Any = jnp.float32

  def _cross_stack(self, source: Array, target: Array, n: int, name: str, key_mask, train: bool) -> Array:
    x = target
    for i in range(n):
      x = CrossModalLayer(self.d_ff, self.num_heads, self.dropout, self.gated, self.compat_reference_layers,
                          self.attention_impl, self.dtype, name=f'{name}_{i}')(
          source, target if self.compat_reference_layers else x, key_mask=key_mask, train=train)
    return x

  @nn.compact
  def __call__(self, audio: Array | None, visual: Array | None, mask: Array | None = None, *,
               train: bool) -> Array:
    """audio `[B, T, Fa]` or None, visual `[B, T, Fv]` or None, mask `[B, T]` bool (True = frame
    exists) -> `[B, T, d_embedding]`."""
    if audio is None and visual is None:
      raise ValueError('CrossModalFusion needs at least one of audio, visual')
    if audio is not None and visual is not None:
      half = self.d_embedding // 2
      a0 = FrontEnd(half, self.dtype, name='audio_in')(audio, mask)
      v0 = FrontEnd(half, self.dtype, name='visual_in')(visual, mask)
      a2v = self._cross_stack(a0, v0, self.n_ca, 'a2v', mask, train)
      v2a = self._cross_stack(v0, a0, self.n_cv, 'v2a', mask, train)
      x = jnp.concatenate([a2v, v2a], axis=-1)
    else:
      x = FrontEnd(self.d_embedding, self.dtype, name='audio_in' if visual is None else 'visual_in')(
          audio if visual is None else visual, mask)
    for i in range(self.num_layers):
      x = PostLNEncoderLayer(self.d_ff, self.num_heads, self.dropout, self.act, self.attention_impl,
                             self.dtype, name=f'self_{i}')(x, key_mask=mask, train=train)
    return activation(self.act)(x)
