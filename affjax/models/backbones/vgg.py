"""VGG-style trunks of the sparse end-to-end model (spec sparse_e2e §2, §5.2): a dense low-level part, then
three stages that run on the sites a cross-modal attention keeps, then a flatten MLP.

Channels scale with `width` (64 in the reference): low level `width`, stages 2, 4, 8 x `width`.
    visual 48x48x3  -> low level 24x24xw -> stages 12x12x2w, 6x6x4w, 3x3x8w -> MLP -> d
    audio 128x32x1  -> low level 64x16xw -> stages 32x8x2w, 16x4x4w, 8x2x8w  -> MLP -> d
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import sparse_stages
from affjax.models.layers import torch_dense

Array = jax.Array

NUM_STAGES = 3


class VggLowLevel(nn.Module):
  """conv5x5 (pad 2) - BN - ReLU - max-pool 2, then two dense VGG blocks: `[N, H, W, C]` -> `[N, H/2, W/2,
  width]`. BatchNorm statistics cover the samples where `sample_valid` `[N]` is true."""

  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, sample_valid: Array, *, train: bool) -> Array:
    n, h, w, c = x.shape
    kernel = self.param('conv', sparse_stages.he_normal, (5, 5, c, self.width), jnp.float32)
    x = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), ((2, 2), (2, 2)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    every = jnp.broadcast_to(sample_valid[:, None, None], (n, h, w))
    x = sparse_stages.max_pool2(nn.relu(sparse_stages.MaskedBatchNorm(name='bn')(x, every, train=train)))
    all_sites = jnp.ones(x.shape[:3], bool)
    for i in range(2):
      block = sparse_stages.VggBlock(self.width, dtype=self.dtype, name=f'block{i}')
      x = block(x, all_sites, sample_valid, train=train)
    return x


class SparseVggTrunk(nn.Module):
  """The three (sparse) stages and the flatten MLP: low-level features `[N, H, W, width]`, query `[N, Q]`,
  sample_valid `[N]` -> embedding `[N, d_model]`.

  Per stage l (spec §5.2): α = scorer_l(f, query) over the active sites, active &= nucleus(α, top_p) (top_p
  a call argument, so that it can follow a schedule); with `impl='gather'` the active set is cut to the
  ⌈capacity·H_l·W_l⌉ sites of highest α (the masked-dense stages make the same cut when the call passes
  `capacity`, e.g. annealed while a gather model warms up); the features are weighted by
  `sparse_stages.attention_weights` (`scma_grad`), a VGG block runs on the active sites, then a 2x2 max-pool (the
  active mask is pooled too). `sparse=False` is the dense FE2E trunk (no scorers, all sites).
  Sows each stage's kept fraction of sites (over valid samples) as `intermediates/keep_fraction`.
  """

  width: int = 64
  d_model: int = 64
  mlp_hidden: int = 1024
  sparse: bool = True
  impl: str = 'masked_dense'
  capacity: float = 0.4
  scma_grad: str = 'renorm'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: Array, query: Array, sample_valid: Array, *, train: bool, top_p: Array | float = 0.8,
               capacity: Array | float | None = None) -> Array:
    n, h, w, _ = f.shape
    active = jnp.ones((n, h, w), bool)
    rows = jnp.arange(n)[:, None]
    for stage in range(NUM_STAGES):
      slots = None
      if self.sparse:
        alpha = sparse_stages.AdditiveScorer(f.shape[-1], name=f'scorer{stage}')(f, query, active)
        keep = sparse_stages.nucleus_mask(jax.lax.stop_gradient(alpha), top_p, active.reshape(n, -1))
        if self.impl == 'gather':
          sites = sparse_stages.capacity(self.capacity, h, w)
          slots = sparse_stages.top_k_slots(jax.lax.stop_gradient(alpha), keep, sites)
          keep = jnp.zeros_like(keep).at[rows, slots[0]].set(slots[1])
        elif capacity is not None:
          keep = sparse_stages.top_fraction_mask(jax.lax.stop_gradient(alpha), keep, capacity)
        weights = sparse_stages.attention_weights(alpha, keep, self.scma_grad).reshape(n, h, w)
        active = keep.reshape(n, h, w)
        self.sow('intermediates', 'keep_fraction',
                 (active.sum((1, 2)) * sample_valid).sum() / jnp.maximum(sample_valid.sum() * h * w, 1))
        f = f * weights[..., None].astype(f.dtype)
      impl = self.impl if self.sparse else 'masked_dense'
      f = sparse_stages.VggBlock(2 ** (stage + 1) * self.width, impl, self.dtype, name=f'stage{stage}')(
          f, active, sample_valid, train=train, slots=slots)
      f, active = sparse_stages.max_pool2(f), sparse_stages.pool_mask(active)
      h, w = h // 2, w // 2
    e = nn.relu(torch_dense(self.mlp_hidden, f[0].size, dtype=self.dtype, name='mlp0')(f.reshape(n, -1)))
    return torch_dense(self.d_model, self.mlp_hidden, dtype=self.dtype, name='mlp1')(e)
