"""BatchNorm over the last axis whose train-mode sums over positions come from native passes on CPU.

`batch_norm(...)` builds flax's `nn.BatchNorm` or, where it gives the same numbers faster, `NativeBatchNorm`:
the same variables (params scale, bias; batch_stats mean, var), statistics (E[x], E[x^2] - E[x]^2 clipped at 0,
over the images the mask keeps), running-average update and normalisation, with the masked sums from
`cpu_kernels.masked_moments` and the backward's sums over positions from `cpu_kernels.normalize`. XLA:CPU writes
`where(mask, x, 0)`, `where(mask, x * x, 0)` and the backward's products out in full with single-threaded loops
before reducing them; the native passes read their operands once on every core (experiments/native_kernels_cpu).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import cpu_kernels


def per_image_mask(x: jax.Array, mask: jax.Array | None) -> jax.Array | None:
  """`mask` as `[N]` float32 (None: every image) when it keeps or drops whole images (shape `[N, 1, ..., 1]`),
  else None for 'not per image'."""
  n = x.shape[0]
  if mask is None:
    return jnp.ones((n,), jnp.float32)
  if mask.shape == (n,) + (1,) * (x.ndim - 1):
    return mask.reshape(n).astype(jnp.float32)
  return None


class NativeBatchNorm(nn.Module):
  """flax's `nn.BatchNorm(use_running_average=False)` over the last axis of a float32 `x`, with a per-image
  mask (`per_image_mask`), its sums computed by `cpu_kernels.masked_moments` and `cpu_kernels.normalize`."""

  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, image_mask: jax.Array) -> jax.Array:
    c = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), (c,))
    n = x.shape[0]
    sums = cpu_kernels.masked_moments(x.reshape(n, -1, c), image_mask)
    count = jnp.sum(image_mask) * (x.size // (n * c))
    mean = sums[0] / count
    var = jnp.maximum(0.0, sums[1] / count - mean * mean)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    mul = jax.lax.rsqrt(var + self.epsilon) * self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    y = cpu_kernels.normalize(x.reshape(n, -1, c), mean, mul,
                              self.param('bias', nn.initializers.zeros, (c,), self.param_dtype))
    return jnp.asarray(y.reshape(x.shape), self.dtype or jnp.result_type(x, self.param_dtype))


def batch_norm(x: jax.Array, mask: jax.Array | None = None, *, train: bool, momentum: float, epsilon: float,
               dtype: Any, name: str) -> jax.Array:
  """`nn.BatchNorm(use_running_average=not train, ...)(x, mask=mask)` as a child `name` of the calling compact
  module, with `NativeBatchNorm` in its place for a train step over float32 on one CPU device with the
  kernels built and a per-image mask."""
  image_mask = per_image_mask(x, mask)
  if train and image_mask is not None and cpu_kernels.usable(x.dtype):
    return NativeBatchNorm(momentum, epsilon, dtype, name=name)(x, image_mask)
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon, dtype=dtype,
                      name=name)(x, mask=mask)
