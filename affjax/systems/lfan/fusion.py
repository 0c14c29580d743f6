"""Leader-follower attentive fusion (spec lfan 2.3): per frame, attention over the modality tokens.

Per frame (no attention over time), with the leader h_0 (the visual TCN output) and followers h_1..h_M:
    k_m = E_m h_m,  q_m = EQ_m h_m,  v_m = EV_m h_m          (Dense d_m -> d, bias)
    A = softmax_rows(K Q^T / sqrt(d))                       K, Q, V [M+1, d], A [M+1, M+1]
    F = LayerNorm over all of [M+1, d] (A V + V)            flattened to (M+1) d
The reference's names are swapped: K acts as the query. The output is `[h_0 ; F]`, the leader's features
concatenated to the attended ones; the regressor is the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.layers import torch_dense

Array = jax.Array


class LeaderFollowerFusion(nn.Module):
  """`(leader [..., D_0], followers [[..., D_m]]) -> [..., D_0 + (M+1) d]` (float32 attention and LayerNorm).

  `compat_follower_qv_from_key` (lfan bug 2): the followers' queries and values are computed from their
  keys, `q_m = EQ_m k_m`, `v_m = EV_m k_m` (the leader's are not affected); needs d_m = d.
  """

  d: int = 32
  compat_follower_qv_from_key: bool = False

  @nn.compact
  def __call__(self, leader: Array, followers: Sequence[Array]) -> Array:
    keys, queries, values = [], [], []
    for m, h in enumerate([leader, *followers]):
      h = h.astype(jnp.float32)
      k = torch_dense(self.d, h.shape[-1], name=f'key{m}')(h)
      source = k if (m > 0 and self.compat_follower_qv_from_key) else h
      queries.append(torch_dense(self.d, source.shape[-1], name=f'query{m}')(source))
      values.append(torch_dense(self.d, source.shape[-1], name=f'value{m}')(source))
      keys.append(k)
    k, q, v = (jnp.stack(x, axis=-2) for x in (keys, queries, values))  # [..., M+1, d]
    logits = jnp.einsum('...id,...jd->...ij', k, q) / jnp.sqrt(jnp.float32(self.d))
    attended = jnp.einsum('...ij,...jd->...id', jax.nn.softmax(logits, axis=-1), v) + v
    fused = nn.LayerNorm(epsilon=1e-5, reduction_axes=(-2, -1), feature_axes=(-2, -1), name='norm')(attended)
    fused = fused.reshape(*fused.shape[:-2], -1)
    return jnp.concatenate([leader.astype(jnp.float32), fused], axis=-1)
