"""Concatenation fusion with a (Bi)LSTM (`concatrnn` / `concatbirnn`, spec rnn_attn 2.3).

    cat[audio, visual] [B,T,Fa+Fv] -> Dense(d) -> act -> LSTM(num_layers, hidden d, dropout between layers,
    optionally bidirectional)  ->  [B,T,d] ([B,T,2d] bidirectional)

Padded frames (mask False) leave the recurrent state unchanged, so the backward direction starts at each
sequence's last real frame.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.systems.audio_visual.self_attn import concat_projection
from affjax.models.temporal import LSTM

Array = jax.Array


class LSTMFusion(nn.Module):
  """Concat -> projection -> (Bi)LSTM, `-> [B, T, d_embedding * (2 if bidirectional else 1)]`."""

  d_embedding: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.3
  act: str = 'gelu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, audio: Array | None, visual: Array | None, mask: Array | None = None, *,
               train: bool) -> Array:
    """audio `[B, T, Fa]` or None, visual `[B, T, Fv]` or None, mask `[B, T]` bool -> `[B, T, d(*2)]`."""
    x = concat_projection(audio, visual, self.d_embedding, self.act, self.dtype)
    return LSTM(self.d_embedding, self.num_layers, bidirectional=self.bidirectional, dropout=self.dropout,
                name='lstm')(x, mask, train=train)
