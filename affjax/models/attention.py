"""The one attention function every affjax model uses, a PyTorch-compatible multi-head attention and the post-LN
self-attention encoder layer built on it."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax.models.layers import activation, symmetric_uniform, torch_dense, torch_kernel_init
from affjax.models.torch_convert import StateDictReader

Array = jax.Array

ATTENTION_IMPLS = (None, 'xla', 'cudnn')


def dot_product_attention(q: Array, k: Array, v: Array, *, key_mask: Array | None = None,
                          dropout_rate: float = 0.0, dropout_rng: Array | None = None,
                          deterministic: bool = True, implementation: str | None = None) -> Array:
  """Scaled (1/sqrt(H)) softmax attention.

  Args:
    q: `[B, T, N, H]` queries; k, v: `[B, S, N, H]` keys and values.
    key_mask: `[B, S]` bool, True where a key may be attended (key padding mask).
    dropout_rate, dropout_rng, deterministic: dropout on the attention weights (PyTorch MHA style).
    implementation: passed to `jax.nn.dot_product_attention` (None = XLA, 'cudnn' on GPU).
  Returns:
    `[B, T, N, H]`. Rows whose keys are all masked are zero (never NaN).

  Without active dropout this is `jax.nn.dot_product_attention`, which has no dropout; with it, the
  same computation is written out (einsum, float32 softmax) and the weights are dropped.
  """
  b, t = q.shape[:2]
  s = k.shape[1]
  mask = None if key_mask is None else jnp.broadcast_to(key_mask[:, None, None, :], (b, 1, t, s))
  if deterministic or dropout_rate == 0.0:
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  else:
    logits = jnp.einsum('BTNH,BSNH->BNTS', q, k, preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
    logits = logits * (1.0 / np.sqrt(q.shape[-1]))
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(v.dtype)
    out = jnp.einsum('BNTS,BSNH->BTNH', probs, v)
  if key_mask is not None:
    out = jnp.where(key_mask.any(axis=1)[:, None, None, None], out, 0)
  return out


class MultiHeadAttention(nn.Module):
  """Multi-head attention laid out like `torch.nn.MultiheadAttention` (batch first).

  Parameters: `query`/`key`/`value` kernels `[E, heads, head_dim]` with biases `[heads, head_dim]`,
  `out` kernel `[heads, head_dim, E]` with bias `[E]`. Init as PyTorch: in-projections Xavier-uniform
  over the stacked `[3E, E]` matrix, out kernel U(+-1/sqrt(E)), all biases zero.
  """

  num_heads: int
  dropout_rate: float = 0.0
  implementation: str | None = None
  dtype: Any = None

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, *, key_mask: Array | None = None,
               deterministic: bool = True) -> Array:
    """inputs_q `[B, T, E]`, inputs_kv `[B, S, E]`, key_mask `[B, S]` bool -> `[B, T, E]`."""
    e = inputs_q.shape[-1]
    if e % self.num_heads:
      raise ValueError(f'num_heads={self.num_heads} does not divide the width {e}')
    head_dim = e // self.num_heads
    in_init = symmetric_uniform(np.sqrt(6.0 / (e + 3 * e)))

    def proj(name, x):
      return nn.DenseGeneral((self.num_heads, head_dim), kernel_init=in_init, dtype=self.dtype, name=name)(x)

    q, k, v = proj('query', inputs_q), proj('key', inputs_kv), proj('value', inputs_kv)
    dropout_active = not deterministic and self.dropout_rate > 0.0
    y = dot_product_attention(
        q, k, v, key_mask=key_mask, dropout_rate=self.dropout_rate,
        dropout_rng=self.make_rng('dropout') if dropout_active else None,
        deterministic=deterministic, implementation=self.implementation)
    return nn.DenseGeneral(e, axis=(-2, -1), kernel_init=torch_kernel_init, dtype=self.dtype, name='out')(y)


class PostLNEncoderLayer(nn.Module):
  """Post-LN self-attention layer (the reference's `SelfattentionLayer`):
  x = LN(x + Drop(MHA(x)));  x = LN(x + Drop(Dense(d)(Drop(act(Dense(d_ff)(x))))))."""

  d_ff: int
  num_heads: int
  dropout: float
  act: str = 'gelu'
  attention_impl: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, key_mask: Array | None, train: bool) -> Array:
    width = x.shape[-1]
    drop = nn.Dropout(self.dropout, deterministic=not train)
    a = MultiHeadAttention(self.num_heads, self.dropout, self.attention_impl, self.dtype, name='attn')(
        x, x, key_mask=key_mask, deterministic=not train)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='norm_attn')(x + drop(a))
    h = activation(self.act)(torch_dense(self.d_ff, width, dtype=self.dtype, name='ffn_in')(x))
    h = torch_dense(width, self.d_ff, dtype=self.dtype, name='ffn_out')(drop(h))
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='norm_ffn')(x + drop(h))


def from_torch(sd: StateDictReader, num_heads: int, prefix: str = '') -> dict[str, dict[str, np.ndarray]]:
  """`MultiHeadAttention` params from a `torch.nn.MultiheadAttention` state dict (packed `in_proj_weight`
  [3E, E] and `in_proj_bias`, then `out_proj`), tensors under `prefix`."""
  w, b = sd[f'{prefix}in_proj_weight'], sd[f'{prefix}in_proj_bias']
  e = w.shape[1]
  if e % num_heads:
    raise ValueError(f'{sd.source}: {prefix}in_proj_weight has width {e}, which {num_heads} heads do not divide: '
                     'give the number of heads the model was trained with')
  params = {name: {'kernel': w[i * e:(i + 1) * e].T.reshape(e, num_heads, e // num_heads),
                   'bias': b[i * e:(i + 1) * e].reshape(num_heads, e // num_heads)}
            for i, name in enumerate(['query', 'key', 'value'])}
  params['out'] = {'kernel': sd[f'{prefix}out_proj.weight'].T.reshape(num_heads, e // num_heads, e),
                   'bias': sd[f'{prefix}out_proj.bias']}
  return params
