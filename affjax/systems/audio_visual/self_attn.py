"""Concatenation fusion with a transformer encoder (`concatselfattn`, spec rnn_attn 2.3).

    cat[audio, visual] [B,T,Fa+Fv] -> Dense(d) -> act -> + PE -> Dropout(p)
      -> num_layers x PostLNEncoderLayer -> act  ->  [B,T,d]

No final norm. Padded frames (mask False) are masked as keys in every layer (the reference uses no mask).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.attention import PostLNEncoderLayer
from affjax.models.layers import activation, sinusoidal_pe, torch_dense

Array = jax.Array


def concat_projection(audio: Array | None, visual: Array | None, features: int, act: str, dtype: Any,
                      name: str = 'project') -> Array:
  """cat[audio, visual] (whichever are given) -> Dense(features) -> act, inside a compact module."""
  feats = [f for f in (audio, visual) if f is not None]
  if not feats:
    raise ValueError('the fusion needs at least one of audio, visual')
  x = jnp.concatenate(feats, axis=-1)
  return activation(act)(torch_dense(features, x.shape[-1], dtype=dtype, name=name)(x))


class SelfAttentionFusion(nn.Module):
  """Concat -> projection -> sinusoidal positions -> post-LN transformer encoder, `-> [B, T, d_embedding]`."""

  d_embedding: int = 128
  d_ff: int = 128
  num_heads: int = 4
  num_layers: int = 4
  dropout: float = 0.3
  act: str = 'gelu'
  attention_impl: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, audio: Array | None, visual: Array | None, mask: Array | None = None, *,
               train: bool) -> Array:
    """audio `[B, T, Fa]` or None, visual `[B, T, Fv]` or None, mask `[B, T]` bool -> `[B, T, d_embedding]`."""
    x = concat_projection(audio, visual, self.d_embedding, self.act, self.dtype)
    x = x + jnp.asarray(sinusoidal_pe(x.shape[1], self.d_embedding), x.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.num_layers):
      x = PostLNEncoderLayer(self.d_ff, self.num_heads, self.dropout, self.act, self.attention_impl,
                             self.dtype, name=f'self_{i}')(x, key_mask=mask, train=train)
    return activation(self.act)(x)
