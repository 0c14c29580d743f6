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
import numpy as np

from affjax.models.layers import torch_bias_init, torch_kernel_init
from affjax.models.torch_convert import StateDictReader, conv_kernel

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


def _weight_norm_conv(sd: StateDictReader, prefix: str) -> dict:
  """A `weight_norm(Conv1d)`: old-style `weight_g` / `weight_v` or `parametrizations.weight.original{0,1}`."""
  g, v = ((f'{prefix}.weight_g', f'{prefix}.weight_v') if f'{prefix}.weight_g' in sd else
          (f'{prefix}.parametrizations.weight.original0', f'{prefix}.parametrizations.weight.original1'))
  return {'v': conv_kernel(sd[v]), 'g': sd[g].reshape(-1), 'bias': sd[f'{prefix}.bias']}


def from_torch(sd: StateDictReader, prefix: str = '') -> dict[str, dict]:
  """Params of `TemporalConvNet` from the TCN of ABAW2 (`model/temporal_convolutional_model.py`): blocks
  `<prefix>network.<i>` with weight-normalised `conv1`, `conv2` (also saved again as `net.0`, `net.4`: the same
  modules in the block's Sequential, checked equal) and a 1x1 `downsample` where the width changes."""
  params, i = {}, 0
  while f'{prefix}network.{i}.conv1.bias' in sd:
    block = f'{prefix}network.{i}'
    level = {f'conv{j}': _weight_norm_conv(sd, f'{block}.conv{j}') for j in (1, 2)}
    for j, alias in ((1, 0), (2, 4)):
      if f'{block}.net.{alias}.bias' in sd:
        again = _weight_norm_conv(sd, f'{block}.net.{alias}')
        if any(not np.array_equal(again[k], level[f'conv{j}'][k]) for k in again):
          raise ValueError(f'{sd.source}: {block}.net.{alias} differs from {block}.conv{j}, which it must alias')
    if f'{block}.downsample.weight' in sd:
      level['downsample'] = {'kernel': sd[f'{block}.downsample.weight'][:, :, 0].T,
                             'bias': sd[f'{block}.downsample.bias']}
    params[f'level{i}'] = level
    i += 1
  if not i:
    raise KeyError(f'{sd.source} has no tensor {prefix}network.0.conv1.bias: not a TemporalConvNet state dict')
  return {'params': params}
