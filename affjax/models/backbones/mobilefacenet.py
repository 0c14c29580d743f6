"""MobileFaceNet without its output layer: `[N, 112, 112, 3]` faces in [0, 1] -> `[N, 512]`.

Layout (spec rnn_attn 2.1), spatial size 112 -> 56 -> 28 -> 14 -> 7 -> 1:
  CB 3x3 s2 (64) -> depthwise CB (64) -> DW(64->64, 128, s2) -> 4 x DW(64, 128)
  -> DW(64->128, 256, s2) -> 6 x DW(128, 256) -> DW(128->128, 512, s2) -> 2 x DW(128, 256)
  -> 1x1 CB (512) -> 7x7 depthwise linear conv + BN -> flatten.
CB = conv (no bias) + BN + per-channel PReLU. DW(c->c', g, s) = 1x1 CB to g -> 3x3 depthwise CB
stride s -> 1x1 conv + BN, residual when s = 1. Convolutions pad like PyTorch (3x3: 1 on each side).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import cpu_kernels
from affjax.models.batch_norm import batch_norm
from affjax.models.layers import DepthwiseConv, PointwiseConv, conv_general_dilated, torch_kernel_init
from affjax.models.torch_convert import StateDictReader

Array = jax.Array


class PReLU(nn.Module):
  """Per-channel PReLU (PyTorch `nn.PReLU(C)`, slopes initialised to 0.25); on one CPU device with the native
  kernels its backward pass is `cpu_kernels.prelu`'s."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    slope = self.param('negative_slope', nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    if cpu_kernels.usable(x.dtype):
      return cpu_kernels.prelu(x, slope)
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class ConvBlock(nn.Module):
  """Conv (no bias) -> BN (momentum 0.9, eps 1e-5) [-> PReLU when `act`].

  `depthwise`: a depthwise conv (`features` must equal the input channels); 1x1 convs are `PointwiseConv`
  matmuls. Kernels are HWIO in every case, padding is PyTorch's k // 2 on each side."""

  features: int
  kernel_size: int = 1
  strides: int = 1
  depthwise: bool = False
  act: bool = True
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    k, pad = self.kernel_size, self.kernel_size // 2
    if self.depthwise:
      x = DepthwiseConv(k, self.strides, pad, impl=self.depthwise_impl, dtype=self.dtype, name='conv')(x)
    elif k == 1 and self.strides == 1:
      x = PointwiseConv(self.features, dtype=self.dtype, name='conv')(x)
    else:
      x = nn.Conv(self.features, (k, k), self.strides, padding=((pad, pad), (pad, pad)), use_bias=False,
                  kernel_init=torch_kernel_init, dtype=self.dtype, conv_general_dilated=conv_general_dilated,
                  name='conv')(x)
    x = batch_norm(x, mask, train=train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name='bn')
    return PReLU(name='prelu')(x) if self.act else x


class DWBlock(nn.Module):
  """1x1 CB to `groups` -> 3x3 depthwise CB (stride) -> 1x1 conv + BN to `features`; residual if stride 1."""

  features: int
  groups: int
  strides: int = 1
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    y = ConvBlock(self.groups, dtype=self.dtype, name='expand')(x, train=train, mask=mask)
    y = ConvBlock(self.groups, 3, self.strides, depthwise=True, depthwise_impl=self.depthwise_impl,
                  dtype=self.dtype, name='dw')(y, train=train, mask=mask)
    y = ConvBlock(self.features, act=False, dtype=self.dtype, name='project')(y, train=train, mask=mask)
    return x + y if self.strides == 1 else y


class GlobalDepthwiseConv(nn.Module):
  """A k x k depthwise conv without padding over a k x k map, i.e. a per-channel weighted sum:
  `[N, k, k, C] -> [N, C]` (kernel `[k, k, 1, C]`). Exact elementwise multiply-sum on every backend."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', torch_kernel_init, (x.shape[1], x.shape[2], 1, x.shape[3]), jnp.float32)
    acc = jnp.promote_types(self.dtype, jnp.float32)
    y = jnp.sum(x.astype(acc) * kernel[:, :, 0, :].astype(acc), axis=(1, 2))
    return y.astype(self.dtype)


# (features, groups, stride, repeats) of the DW stages after the first two conv blocks.
STAGES = ((64, 128, 2, 1), (64, 128, 1, 4), (128, 256, 2, 1), (128, 256, 1, 6), (128, 512, 2, 1),
          (128, 256, 1, 2))


class MobileFaceNet(nn.Module):
  """MobileFaceNet feature extractor (0.94 M params), `[N, 112, 112, 3]` in [0, 1] -> `[N, 512]`.

  `mask` (`[N]` bool, optional) keeps padded images out of the train-mode BatchNorm statistics.
  `dtype` is the compute dtype (params float32); `depthwise_impl` selects the 3x3 depthwise conv
  implementation ('auto' | 'grouped' | 'shifted', see `layers.depthwise_conv2d`).
  """

  dtype: Any = jnp.float32
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    if x.shape[1:] != (112, 112, 3):
      raise ValueError(f'MobileFaceNet needs [N, 112, 112, 3] faces (its last conv is 7x7 over the 7x7 map), '
                       f'got {list(x.shape)}')
    bn_mask = None if mask is None else mask[:, None, None, None]
    x = (x.astype(self.dtype) - 0.5) / 0.5
    x = ConvBlock(64, 3, 2, dtype=self.dtype, name='conv1')(x, train=train, mask=bn_mask)
    x = ConvBlock(64, 3, 1, depthwise=True, depthwise_impl=self.depthwise_impl, dtype=self.dtype,
                  name='conv2_dw')(x, train=train, mask=bn_mask)
    i = 0
    for features, groups, stride, repeats in STAGES:
      for _ in range(repeats):
        x = DWBlock(features, groups, stride, self.depthwise_impl, self.dtype, name=f'dw{i}')(
            x, train=train, mask=bn_mask)
        i += 1
    x = ConvBlock(512, dtype=self.dtype, name='conv6_sep')(x, train=train, mask=bn_mask)
    x = GlobalDepthwiseConv(self.dtype, name='conv6_dw')(x)
    return batch_norm(x, None if mask is None else mask[:, None], train=train, momentum=0.9, epsilon=1e-5,
                      dtype=self.dtype, name='bn_out')


# The upstream module of each DW stage (abaw3_rnn_attn / UncertainEmotion `MobileFaceNet`): a single
# `Depth_Wise`, or a `Residual` whose blocks are `<name>.model.<j>`.
UPSTREAM_STAGES = ('conv_23', 'conv_3', 'conv_34', 'conv_4', 'conv_45', 'conv_5')


def from_torch(sd: StateDictReader) -> dict[str, dict]:
  """Variables from the state dict of the MobileFaceNet Karas et al. use (abaw3_rnn_attn
  `models/modules/mobilefacenet.py`, face-alignment's checkpoint): `conv1`, `conv2_dw`, the DW stages
  `conv_23`, `conv_3.model.<j>`, `conv_34`, `conv_4.model.<j>`, `conv_45`, `conv_5.model.<j>` (each
  `.conv`, `.conv_dw`, `.project`), `conv_6_sep`, then `output_layer.conv_6_dw` (conv + BN). The landmark
  head `output_layer.linear` / `output_layer.bn` is the caller's to leave out."""

  def conv_block(prefix: str, act: bool = True):
    bn, stats = sd.batch_norm(f'{prefix}.bn')
    params = {'conv': sd.conv(f'{prefix}.conv'), 'bn': bn}
    if act:
      params['prelu'] = {'negative_slope': sd[f'{prefix}.prelu.weight']}
    return params, {'bn': stats}

  params, stats = {}, {}
  for name in ('conv1', 'conv2_dw'):
    params[name], stats[name] = conv_block(name)
  i = 0
  for stage, (_, _, _, repeats) in zip(UPSTREAM_STAGES, STAGES):
    for j in range(repeats):
      block = stage if repeats == 1 else f'{stage}.model.{j}'
      parts = {ours: conv_block(f'{block}.{theirs}', act=ours != 'project')
               for ours, theirs in (('expand', 'conv'), ('dw', 'conv_dw'), ('project', 'project'))}
      params[f'dw{i}'] = {p: v for p, (v, _) in parts.items()}
      stats[f'dw{i}'] = {p: s for p, (_, s) in parts.items()}
      i += 1
  params['conv6_sep'], stats['conv6_sep'] = conv_block('conv_6_sep')
  params['conv6_dw'] = sd.conv('output_layer.conv_6_dw.conv')
  params['bn_out'], stats['bn_out'] = sd.batch_norm('output_layer.conv_6_dw.bn')
  return {'params': params, 'batch_stats': stats}
