"""ResNet-18 backbones, channels-last, with torchvision's layouts and converters from its state dicts.

- `ResNet18`: torchvision `resnet18` without avgpool/fc and with an `in_channels` conv1 (1 for log-mel
  patches): `[N, H, W, C]` -> `[N, H/32, W/32, 512]`.
- `R2Plus1D18`: torchvision `video.r2plus1d_18` without avgpool/fc: clips `[N, T, H, W, 3]` ->
  `[N, T/8, H/16, W/16, 512]` (8x112x112 -> 1x7x7). Each (2+1)D conv is a 1xkxk spatial conv to
  `mid = (cin * cout * 27) // (9 * cin + 3 * cout)` channels, BatchNorm, ReLU, then a kx1x1 temporal conv.

BatchNorm: momentum 0.9 (PyTorch 0.1), eps 1e-5; `train=False` uses the running statistics.
Convolutions: `conv_impl` 'xla' (XLA's convolution), 'taps' (one matmul over the kernel's taps, each a strided
slice of the padded input) or 'auto' = 'taps' on CPU, where XLA's convolution of some small maps (2-row maps:
the audio trunk's layer 4, 32 px clips) is very slow (experiments/rjca/conv_impl_cpu.md), else 'xla'.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.layers import conv_taps, lookup, torch_kernel_init
from affjax.models.torch_convert import StateDictReader

Array = jax.Array
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride) of layer1..layer4, two blocks each
CONV_IMPLS = ('auto', 'xla', 'taps')


def _bn(train: bool, dtype, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class Conv(nn.Module):
  """Bias-free conv `[N, *S, Cin]` -> `[N, *S_out, features]` with PyTorch's symmetric `k // 2` padding per axis
  and default init; parameter `kernel [*kernel_size, Cin, features]` (as `nn.Conv`)."""

  features: int
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  dtype: Any = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', torch_kernel_init, (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    padding = [(k // 2, k // 2) for k in self.kernel_size]
    impl = lookup(CONV_IMPLS, self.impl, 'conv_impl')
    if impl == 'taps' or (impl == 'auto' and jax.default_backend() == 'cpu'):
      return conv_taps(x, kernel, self.strides, padding)
    spatial = ''.join('DHW'[3 - len(self.kernel_size):])
    return jax.lax.conv_general_dilated(x, kernel, self.strides, padding,
                                        dimension_numbers=(f'N{spatial}C', f'{spatial}IO', f'N{spatial}C'))


def _conv(features: int, kernel: tuple[int, ...], strides: tuple[int, ...], dtype, name: str,
          impl: str = 'auto') -> Conv:
  return Conv(features, kernel, strides, dtype, impl, name=name)


def midplanes(cin: int, cout: int) -> int:
  """Channels between the spatial and temporal convs of a (2+1)D conv (torchvision's parameter match)."""
  return (cin * cout * 27) // (9 * cin + 3 * cout)


class Conv2Plus1D(nn.Module):
  """1x3x3 conv (spatial stride) -> BN -> ReLU -> 3x1x1 conv (temporal stride), `[N, T, H, W, C]`."""

  features: int
  mid: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    s = self.stride
    x = _conv(self.mid, (1, 3, 3), (1, s, s), self.dtype, 'spatial', self.conv_impl)(x)
    x = nn.relu(_bn(train, self.dtype, 'bn')(x))
    return _conv(self.features, (3, 1, 1), (s, 1, 1), self.dtype, 'temporal', self.conv_impl)(x)


class BasicBlock(nn.Module):
  """conv -> BN -> ReLU -> conv -> BN, plus the (1x1 conv + BN projected, when the shape changes) input,
  then ReLU. `conv(features, stride, name)` builds the block's convs (2-D 3x3 or (2+1)D)."""

  features: int
  stride: int
  conv: Callable[..., nn.Module]
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    y = self.conv(self.features, self.stride, 'conv1')(x, train=train)
    y = nn.relu(_bn(train, self.dtype, 'bn1')(y))
    y = self.conv(self.features, 1, 'conv2')(y, train=train)
    y = _bn(train, self.dtype, 'bn2')(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      spatial = x.ndim - 2
      x = _conv(self.features, (1,) * spatial, (self.stride,) * spatial, self.dtype, 'downsample_conv',
                self.conv_impl)(x)
      x = _bn(train, self.dtype, 'downsample_bn')(x)
    return nn.relu(x + y)


class Conv3x3(nn.Module):
  """A 3x3 2-D conv with the block's `(x, train=...)` signature (ResNet-18's convs)."""

  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    del train
    return _conv(self.features, (3, 3), (self.stride, self.stride), self.dtype, 'conv', self.conv_impl)(x)


class ResNet18(nn.Module):
  """torchvision ResNet-18 trunk (no avgpool, no fc), `[N, H, W, C]` -> `[N, H/32, W/32, 512]`."""

  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = x.astype(self.dtype)
    x = _conv(64, (7, 7), (2, 2), self.dtype, 'conv1', self.conv_impl)(x)
    x = nn.relu(_bn(train, self.dtype, 'bn1')(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    conv = lambda f, s, name: Conv3x3(f, s, self.dtype, self.conv_impl, name=name)
    for i, (features, stride) in enumerate(STAGES):
      for b in range(2):
        x = BasicBlock(features, stride if b == 0 else 1, conv, self.dtype, self.conv_impl,
                       name=f'layer{i + 1}_{b}')(x, train=train)
    return x


class R2Plus1D18(nn.Module):
  """torchvision R(2+1)D-18 trunk (no avgpool, no fc), `[N, T, H, W, C]` -> `[N, T/8, H/16, W/16, 512]`."""

  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = x.astype(self.dtype)
    x = _conv(45, (1, 7, 7), (1, 2, 2), self.dtype, 'stem_spatial', self.conv_impl)(x)
    x = nn.relu(_bn(train, self.dtype, 'stem_bn1')(x))
    x = _conv(64, (3, 1, 1), (1, 1, 1), self.dtype, 'stem_temporal', self.conv_impl)(x)
    x = nn.relu(_bn(train, self.dtype, 'stem_bn2')(x))
    for i, (features, stride) in enumerate(STAGES):
      for b in range(2):
        mid = midplanes(x.shape[-1], features)
        conv = lambda f, s, name, mid=mid: Conv2Plus1D(f, mid, s, self.dtype, self.conv_impl, name=name)
        x = BasicBlock(features, stride if b == 0 else 1, conv, self.dtype, self.conv_impl,
                       name=f'layer{i + 1}_{b}')(x, train=train)
    return x


# ----------------------------------------------------------------------------- torchvision state dicts
def _merge(out: dict, name: str, converted: tuple[dict, dict]) -> None:
  params, stats = converted
  out['params'][name], out['batch_stats'][name] = params, stats


def _stem_kernel(sd: StateDictReader, key: str, in_channels: int):
  """The first conv's kernel, keeping input channels [0, in_channels) of a wider checkpoint stem (TSAV's
  4-channel stem with a mask channel: spec B10), logged; fewer channels than the model's is an error."""
  kernel = sd.conv(key.removesuffix('.weight'))['kernel']
  have = kernel.shape[-2]
  if have < in_channels:
    raise ValueError(f'{sd.source}: {key} has {have} input channels, the model needs {in_channels}')
  if have > in_channels:
    logging.warning('%s: keeping input channels [0, %d) of the %d of %s', sd.source, in_channels, have, key)
  return kernel[..., :in_channels, :]


def resnet18_from_torch(sd: StateDictReader, in_channels: int = 1) -> dict[str, dict]:
  """Variables of `ResNet18` from a torchvision `resnet18` state dict (`conv1`, `bn1`, `layer{l}.{b}.*`;
  `fc` is the classifier head the caller ignores)."""
  out = {'params': {'conv1': {'kernel': _stem_kernel(sd, 'conv1.weight', in_channels)}}, 'batch_stats': {}}
  _merge(out, 'bn1', sd.batch_norm('bn1'))
  for i in range(len(STAGES)):
    for b in range(2):
      t = f'layer{i + 1}.{b}'
      params, stats = {}, {}
      for j in (1, 2):
        params[f'conv{j}'] = {'conv': sd.conv(f'{t}.conv{j}')}
        params[f'bn{j}'], stats[f'bn{j}'] = sd.batch_norm(f'{t}.bn{j}')
      if f'{t}.downsample.0.weight' in sd:
        params['downsample_conv'] = sd.conv(f'{t}.downsample.0')
        params['downsample_bn'], stats['downsample_bn'] = sd.batch_norm(f'{t}.downsample.1')
      _merge(out, f'layer{i + 1}_{b}', (params, stats))
  return out


def r2plus1d18_from_torch(sd: StateDictReader, in_channels: int = 3) -> dict[str, dict]:
  """Variables of `R2Plus1D18` from a torchvision `video.r2plus1d_18` state dict (`stem.{0,1,3,4}`,
  `layer{l}.{b}.conv{1,2}.{0.0,0.1,0.3,1}`, `downsample.{0,1}`; `fc` is the head the caller ignores)."""
  out = {'params': {'stem_spatial': {'kernel': _stem_kernel(sd, 'stem.0.weight', in_channels)},
                    'stem_temporal': sd.conv('stem.3')}, 'batch_stats': {}}
  _merge(out, 'stem_bn1', sd.batch_norm('stem.1'))
  _merge(out, 'stem_bn2', sd.batch_norm('stem.4'))
  for i in range(len(STAGES)):
    for b in range(2):
      t = f'layer{i + 1}.{b}'
      params, stats = {}, {}
      for j in (1, 2):
        bn, bn_stats = sd.batch_norm(f'{t}.conv{j}.0.1')
        params[f'conv{j}'] = {'spatial': sd.conv(f'{t}.conv{j}.0.0'), 'bn': bn, 'temporal': sd.conv(f'{t}.conv{j}.0.3')}
        stats[f'conv{j}'] = {'bn': bn_stats}
        params[f'bn{j}'], stats[f'bn{j}'] = sd.batch_norm(f'{t}.conv{j}.1')
      if f'{t}.downsample.0.weight' in sd:
        params['downsample_conv'] = sd.conv(f'{t}.downsample.0')
        params['downsample_bn'], stats['downsample_bn'] = sd.batch_norm(f'{t}.downsample.1')
      _merge(out, f'layer{i + 1}_{b}', (params, stats))
  return out
