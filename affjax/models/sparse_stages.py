"""Sparse cross-modal stages of the sparse end-to-end model (spec sparse_e2e §2, §5.2, §5.4).

Per stage and frame: an additive scorer with a query from the other modality gives attention `α` over the
still-active sites; nucleus (top-p) selection refines the active mask; the kept features are weighted by
the renormalised attention (so the scorer is trained) and a VGG block (conv3-BN-ReLU x2, no conv bias)
runs on the active sites only, then a 2x2 max-pool. Two implementations of the same function:

  masked_dense  dense convolutions over the whole grid, inputs and outputs zeroed off the mask (exact)
  gather        a fixed capacity K of sites per frame: the 3x3 neighbourhoods of the K slots are gathered,
                one matmul `[N·K, 9C] @ [9C, C']`, scattered back for pooling (FLOPs scale with K)

Masks are per site `[N, H, W]` bool; features channels-last `[N, H, W, C]`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SPARSE_IMPLS = ('masked_dense', 'gather')
SCMA_GRADS = ('renorm', 'straight_through', 'none')

BN_EPS = 1e-4  # scn's BatchNorm settings (spec §2), for the sparse and the dense trunk alike
BN_MOMENTUM = 0.99


# ----------------------------------------------------------------------------- selection
def nucleus_mask(alpha: Array, p: float, valid: Array | None = None) -> Array:
  """Top-p selection per row: `alpha [N, S]` (a distribution over the valid sites) -> kept `[N, S]` bool.

  Sites are sorted by descending α (ties in index order); a site is kept iff the sum of the α before it
  in that order is < p. The top valid site is always kept, p >= 1 keeps every valid site, and invalid
  sites (`valid` False) are never kept. `p` may be a traced scalar (`anneal_from_one`).
  """
  if valid is None:
    valid = jnp.ones(alpha.shape, bool)
  scores = jnp.where(valid, alpha, -jnp.inf)
  order = jnp.argsort(-scores, axis=-1, stable=True)
  sorted_alpha = jnp.take_along_axis(jnp.where(valid, alpha, 0), order, axis=-1)
  before = jnp.cumsum(sorted_alpha, axis=-1) - sorted_alpha
  keep_sorted = (before < p) | (p >= 1) | (jnp.arange(alpha.shape[-1]) == 0)
  keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
  return keep & valid


def anneal_from_one(target: float, warmup_steps: int, step: Array) -> Array:
  """A pruning level (nucleus mass, capacity) at training step `step`: 1 (nothing pruned) at step 0, linearly
  down to `target` at `warmup_steps`, `target` from then on (`warmup_steps` 0: always `target`)."""
  if warmup_steps <= 0:
    return jnp.float32(target)
  return 1.0 - (1.0 - target) * jnp.minimum(step.astype(jnp.float32) / warmup_steps, 1.0)


def capacity(fraction: float, height: int, width: int) -> int:
  """Sites per frame a `gather` stage computes: ⌈fraction·H·W⌉, at least 1 and at most H·W."""
  return min(height * width, max(1, math.ceil(fraction * height * width - 1e-9)))


def top_fraction_mask(alpha: Array, keep: Array, fraction: Array | float) -> Array:
  """`keep [N, S]` cut to its ⌈fraction·S⌉ sites of highest α (ties in index order): the active set of
  `top_k_slots` with k = `capacity(fraction, S, 1)`, for a `fraction` that may be traced (annealed)."""
  s = alpha.shape[-1]
  k = jnp.clip(jnp.ceil(fraction * s - 1e-9), 1, s)
  order = jnp.argsort(-jnp.where(keep, alpha, -1.0), axis=-1, stable=True)
  return keep & (jnp.argsort(order, axis=-1) < k)


def top_k_slots(alpha: Array, keep: Array, k: int) -> tuple[Array, Array]:
  """The k sites of highest α per row, restricted to `keep`: alpha, keep `[N, S]` -> (site index `[N, k]`
  int32, slot active `[N, k]` bool). With k >= |keep| the active slots are exactly `keep`."""
  _, index = jax.lax.top_k(jnp.where(keep, alpha, -1.0), k)
  return index.astype(jnp.int32), jnp.take_along_axis(keep, index, axis=-1)


def attention_weights(alpha: Array, keep: Array, mode: str) -> Array:
  """Per-site input weights g `[N, S]`: α renormalised over the kept sites, times their count (mean 1),
  zero elsewhere (`renorm`); the kept mask with the same gradient (`straight_through`); the mask alone
  (`none`, the reference: scorers get no gradient)."""
  k = keep.astype(alpha.dtype)
  g = alpha * k * k.sum(-1, keepdims=True) / jnp.maximum((alpha * k).sum(-1, keepdims=True), 1e-12)
  if mode == 'renorm':
    return g
  if mode == 'straight_through':
    return k + g - jax.lax.stop_gradient(g)
  if mode == 'none':
    return k
  raise ValueError(f'config.model.scma_grad={mode!r} is not one of {list(SCMA_GRADS)}')


class AdditiveScorer(nn.Module):
  """s(h, w) = w_aᵀ tanh(W_c x(h, w) + b_c + W_y y) + b_a; α = softmax of s over the active sites.

  x `[N, H, W, C]`, y `[N, Q]` (the query), active `[N, H, W]` bool -> α `[N, H·W]` (0 off `active`).
  """

  features: int

  @nn.compact
  def __call__(self, x: Array, y: Array, active: Array) -> Array:
    n = x.shape[0]
    h = nn.Dense(self.features, name='w_c')(x.astype(jnp.float32))
    h = h + nn.Dense(self.features, use_bias=False, name='w_y')(y.astype(jnp.float32))[:, None, None, :]
    s = nn.Dense(1, name='w_a')(jnp.tanh(h))[..., 0].reshape(n, -1)
    flat_active = active.reshape(n, -1)
    s = jnp.where(flat_active, s, -jnp.inf)
    return jnp.where(flat_active, jax.nn.softmax(s, axis=-1), 0.0)


# ----------------------------------------------------------------------------- masked batch norm
class MaskedBatchNorm(nn.Module):
  """BatchNorm over the last axis with statistics over the positions where `mask` is true.

  x `[..., C]`, mask `x.shape[:-1]` bool. Train mode normalises with the batch statistics of the masked
  positions (population variance) and moves the running averages by 1 - momentum; eval mode uses them.
  `affine=False` gives a plain standardisation (input normalisation with training statistics).
  """

  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPS
  affine: bool = True

  @nn.compact
  def __call__(self, x: Array, mask: Array, *, train: bool) -> Array:
    c = x.shape[-1]
    mean_var = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    var_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    if train:
      w = mask.astype(jnp.float32)[..., None]
      axes = tuple(range(x.ndim - 1))
      count = jnp.maximum(w.sum(axes), 1.0)
      xf = x.astype(jnp.float32)
      mean = (w * xf).sum(axes) / count
      var = (w * (xf - mean) ** 2).sum(axes) / count
      if not self.is_initializing():
        mean_var.value = self.momentum * mean_var.value + (1 - self.momentum) * mean
        var_var.value = self.momentum * var_var.value + (1 - self.momentum) * var
    else:
      mean, var = mean_var.value, var_var.value
    y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.affine:
      y = y * self.param('scale', nn.initializers.ones, (c,)) + self.param('bias', nn.initializers.zeros, (c,))
    return y.astype(x.dtype)


# ----------------------------------------------------------------------------- the convolutions
he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')  # std sqrt(2 / (9 C_in)), scn


def max_pool2(x: Array) -> Array:
  """2x2 max-pool, stride 2, over `[N, H, W, C]` (H, W even)."""
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def pool_mask(mask: Array) -> Array:
  """A pooled site is active iff any site of its 2x2 block is: `[N, H, W]` -> `[N, H/2, W/2]`."""
  n, h, w = mask.shape
  return mask.reshape(n, h // 2, 2, w // 2, 2).any(axis=(2, 4))


def neighbour_slots(index: Array, active: Array, height: int, width: int) -> Array:
  """Slot ids of the 3x3 neighbours of every slot, -1 where the neighbour is off the grid or inactive.

  index `[N, K]` (site h·W + w of each slot), active `[N, K]` -> `[N, K, 9]` int32, taps in (dy, dx)
  row-major order (the HWIO kernel's order).
  """
  n, k = index.shape
  grid = jnp.full((n, height + 2, width + 2), -1, jnp.int32)
  hs, ws = index // width, index % width
  slot = jnp.where(active, jnp.arange(k, dtype=jnp.int32), -1)
  rows = jnp.arange(n)[:, None]
  # Inactive slots write -1 at their site, which holds no active slot (slots have distinct sites).
  grid = grid.at[rows, hs + 1, ws + 1].max(slot)
  dy, dx = np.divmod(np.arange(9), 3)
  return grid[rows[..., None], hs[..., None] + dy, ws[..., None] + dx]


def gathered_conv(x: Array, neighbours: Array, kernel: Array) -> Array:
  """3x3 convolution computed at the K slots only: x `[N, K, C]` (slot features), neighbours `[N, K, 9]`
  (-1 = zero), kernel `[3, 3, C, C']` -> `[N, K, C']`."""
  n, k, c = x.shape
  taps = jax.vmap(lambda xs, nb: xs[nb])(x, jnp.maximum(neighbours, 0))  # [N, K, 9, C]
  taps = jnp.where((neighbours >= 0)[..., None], taps, 0).reshape(n * k, 9 * c)
  out = jnp.matmul(taps, kernel.reshape(9 * c, -1).astype(x.dtype))
  return out.reshape(n, k, -1)


class VggBlock(nn.Module):
  """conv3-BN-ReLU-conv3-BN-ReLU (no conv bias, He-normal init) on the active sites (spec §5.2, §5.4).

  x `[N, H, W, C]` (values off `active` are not read), active `[N, H, W]` bool, sample_valid `[N]` bool
  -> `[N, H, W, features]`, 0 off `active`. BatchNorm statistics cover the active sites of valid samples.
  `impl='masked_dense'` convolves the whole grid; `impl='gather'` only the K slots of `slots` = (site index
  `[N, K]`, slot active `[N, K]`), whose active slots must be exactly `active`. Both read only active
  neighbours (submanifold convolution) and hold the same parameters.
  """

  features: int
  impl: str = 'masked_dense'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, active: Array, sample_valid: Array, *, train: bool,
               slots: tuple[Array, Array] | None = None) -> Array:
    n, h, w, c = x.shape
    kernels = [self.param(f'conv{i}', he_normal, (3, 3, cin, self.features), jnp.float32)
               for i, cin in enumerate((c, self.features))]
    norms = [MaskedBatchNorm(name=f'bn{i}') for i in range(2)]
    x = x.astype(self.dtype)
    if self.impl == 'masked_dense':
      x = jnp.where(active[..., None], x, 0)
      stats = active & sample_valid[:, None, None]
      for kernel, norm in zip(kernels, norms):
        x = jax.lax.conv_general_dilated(x, kernel.astype(self.dtype), (1, 1), 'SAME',
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        x = jnp.where(active[..., None], nn.relu(norm(x, stats, train=train)), 0)
      return x
    if self.impl != 'gather':
      raise ValueError(f'config.model.sparse_impl={self.impl!r} is not one of {list(SPARSE_IMPLS)}')
    index, slot_active = slots
    neighbours = neighbour_slots(index, slot_active, h, w)
    y = jnp.take_along_axis(x.reshape(n, h * w, c), index[..., None], axis=1)
    stats = slot_active & sample_valid[:, None]
    for kernel, norm in zip(kernels, norms):
      y = gathered_conv(y, neighbours, kernel)
      y = jnp.where(slot_active[..., None], nn.relu(norm(y, stats, train=train)), 0)
    dense = jnp.zeros((n, h * w, self.features), y.dtype).at[jnp.arange(n)[:, None], index].add(y)
    return dense.reshape(n, h, w, self.features)


# ----------------------------------------------------------------------------- compute accounting
def trunk_macs(input_shape: tuple[int, int, int], width: int = 64, mlp_hidden: int = 1024, d_model: int = 64,
               keep: tuple[float, float, float] | None = None, query_dim: int | None = None) -> dict:
  """Multiply-accumulates per input (one face or one mel patch) of a VGG trunk (`backbones/vgg.py`).

  input_shape (H, W, C); keep = fraction of sites each of the 3 stages computes (None: the dense trunk,
  no scorers; a gather stage computes ⌈capacity·H·W⌉ sites, so pass its capacity). Returns low_level,
  stages (3), scorers (3; 0 when dense), mlp and total. Counts convolutions, scorers and the flatten MLP.
  """
  h, w, c = input_shape
  low = h * w * 25 * c * width + (h // 2) * (w // 2) * 9 * width * width * 4
  h, w = h // 2, w // 2
  stages, scorers = [], []
  for stage in range(3):
    cin, cout = width * 2 ** stage, width * 2 ** (stage + 1)
    fraction = 1.0 if keep is None else keep[stage]
    stages.append(h * w * fraction * 9 * (cin * cout + cout * cout))
    scorers.append(0 if keep is None else h * w * (cin * cin + cin) + (query_dim or width) * cin)
    h, w = h // 2, w // 2
  mlp = h * w * width * 8 * mlp_hidden + mlp_hidden * d_model
  return dict(low_level=low, stages=stages, scorers=scorers, mlp=mlp, total=low + sum(stages) + sum(scorers) + mlp)
