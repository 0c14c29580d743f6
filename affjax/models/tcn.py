"""Causal dilated temporal convolutional network with weight-normalised convolutions (spec lfan 2.2).

`TemporalConvNet(channels, kernel_size)` maps `[B, T, C_in] -> [B, T, channels[-1]]`; level i is a
`TemporalBlock` at dilation 2^i. Every output frame depends only on the same and earlier frames, over a
receptive field of `1 + 2 (k - 1) (2^L - 1)` frames (121 for k = 5 and 4 levels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.layers import torch_bias_init, torch_kernel_init

Array = jax.Array

LEAKY_SLOPE = 0.01
# Xavier-uniform with gain sqrt(2): bound sqrt(6 * 2 / (fan_in + fan_out)).
xavier_uniform_relu_gain = nn.initializers.variance_scaling(2.0, 'fan_avg', 'uniform')


def receptive_field(kernel_size: int, num_levels: int) -> int:
  """Frames an output of a `num_levels`-level TCN sees: itself and `2 (k - 1) (2^L - 1)` earlier ones."""
  return 1 + 2 * (kernel_size - 1) * (2 ** num_levels - 1)


def weight_norm_kernel(v: Array, g: Array) -> Array:
  """`g * v / ||v||` with the norm over every axis but the last (one per output channel); v `[k, I, O]`, g `[O]`."""
  return g * v / jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))


class WeightNormCausalConv(nn.Module):
  """Causal dilated Conv1d with weight normalisation (PyTorch `weight_norm(Conv1d(...))`, dim 0).

  `[B, T, C] -> [B, T, features]`: left padding `(k - 1) * dilation`, so output t sees inputs t - (k-1)d .. t.
  Parameters: `v` `[k, C, features]`, `g` `[features]` (initialised to ||v|| per output channel, as PyTorch
  does), `bias`; `v` and `bias` start as PyTorch's Conv1d default U(+-1/sqrt(C k)).
  """

  features: int
  kernel_size: int
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, c_in = self.kernel_size, x.shape[-1]
    v = self.param('v', torch_kernel_init, (k, c_in, self.features), jnp.float32)
    g = self.param('g', lambda _: jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1))))
    bias = self.param('bias', torch_bias_init(c_in * k), (self.features,), jnp.float32)
    kernel = weight_norm_kernel(v, g).astype(self.dtype)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel, window_strides=(1,),
                                     padding=[((k - 1) * self.dilation, 0)], rhs_dilation=(self.dilation,),
                                     dimension_numbers=('NWC', 'WIO', 'NWC'))
    return y + bias.astype(self.dtype)


class TemporalBlock(nn.Module):
  """Two weight-normalised causal convs, each followed by LeakyReLU(0.01) and channel dropout, plus a residual
  (a 1x1 conv when the width changes): `[B, T, C] -> [B, T, features]`.

  Channel dropout drops whole channels of a window (PyTorch Dropout2d on `[B, C, T]`).
  """

  features: int
  kernel_size: int
  dilation: int
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    y = x
    for i in (1, 2):
      y = WeightNormCausalConv(self.features, self.kernel_size, self.dilation, self.dtype, name=f'conv{i}')(y)
      y = nn.leaky_relu(y, LEAKY_SLOPE)
      y = nn.Dropout(self.dropout, broadcast_dims=(1,), deterministic=not train)(y)
    res = x
    if x.shape[-1] != self.features:
      res = nn.Dense(self.features, kernel_init=xavier_uniform_relu_gain, bias_init=torch_bias_init(x.shape[-1]),
                     dtype=self.dtype, name='downsample')(x)
    return nn.leaky_relu(y + res.astype(y.dtype), LEAKY_SLOPE)


class TemporalConvNet(nn.Module):
  """Stack of `TemporalBlock`s of widths `channels` at dilations 1, 2, 4, ...: `[B, T, C] -> [B, T, channels[-1]]`."""

  channels: Sequence[int]
  kernel_size: int = 5
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    for i, features in enumerate(self.channels):
      x = TemporalBlock(features, self.kernel_size, 2 ** i, self.dropout, self.dtype, name=f'level{i}')(
          x, train=train)
    return x
