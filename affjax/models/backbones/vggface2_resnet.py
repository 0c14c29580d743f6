"""VGGFace2 ResNet-50 / SE-ResNet-50 without the classifier (Oxford VGGFace2 models, the layout of
cydonia999/VGGFace2-pytorch): `[N, S, S, 3]` faces in [0, 1], S >= 195 (native 224) -> `[N, 2048]`.

Layout (spatial size at S = 200 / 224):
  7x7 s2 p3 conv (64) + BN + ReLU -> max-pool 3 s2 (ceil mode)                      50 / 56
  -> layer1: 3 bottlenecks (64 -> 256) -> layer2: 4 (128 -> 512, s2)                 25 / 28
  -> layer3: 6 (256 -> 1024, s2) -> layer4: 3 (512 -> 2048, s2)                      7 / 7
  -> AvgPool2d(7, stride 1) -> mean over the remaining positions (1 x 1 up to S = 226).
Bottleneck (Caffe style: the stride sits on the first 1x1 conv): 1x1 (stride s) -> 3x3 p1 -> 1x1 (4x), each
conv + BN (eps 1e-5), ReLU after the first two; the shortcut is a strided 1x1 conv + BN where the shape changes.
SE-ResNet-50 scales the third BN's output per channel by sigmoid(1x1 conv(ReLU(1x1 conv(global mean)))),
reduction 16, before the residual sum.

Input normalisation: the VGGFace2 one (BGR, 0-255, minus the mean [91.4953, 103.8827, 131.0912], no std);
`compat_rgb01_norm` reproduces the study code's quirk instead (spec rnn_attn bug 7).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.layers import ConvBN, torch_bias_init
from affjax.models.torch_convert import StateDictReader, conv_kernel

Array = jax.Array

MEAN_BGR = (91.4953, 103.8827, 131.0912)  # VGGFace2 (Caffe resnet50_ft.prototxt), on 0-255 BGR
COMPAT_MEAN_RGB01 = (0.357, 0.406, 0.512)  # the study code's mean, subtracted from [0, 1] RGB (bug 7)
MIN_SIZE = 195  # the smallest input whose layer4 map fills the 7x7 average pool
LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride of the first block)
SE_REDUCTION = 16

# The models' Caffe-converted init: conv weights N(0, 2 / (k * k * out_channels)), BN scale 1, bias 0.
caffe_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def vggface2_normalize(x: Array, compat_rgb01_norm: bool = False) -> Array:
  """`[..., 3]` RGB in [0, 1] -> the network's input, float32.

  Default: BGR in 0-255 minus `MEAN_BGR`. `compat_rgb01_norm`: RGB in [0, 1] minus `COMPAT_MEAN_RGB01`.
  """
  x = x.astype(jnp.float32)
  if compat_rgb01_norm:
    return x - jnp.asarray(COMPAT_MEAN_RGB01, jnp.float32)
  return x[..., ::-1] * 255.0 - jnp.asarray(MEAN_BGR, jnp.float32)


def max_pool_ceil(x: Array, window: int, stride: int) -> Array:
  """Unpadded max-pool over `[N, H, W, C]` in PyTorch's ceil mode: a last, partial window is kept when it
  starts inside the input (the part past the edge counts as -inf)."""
  pads = []
  for n in x.shape[1:3]:
    out = -(-(n - window) // stride) + 1
    if (out - 1) * stride >= n:
      out -= 1
    pads.append((0, (out - 1) * stride + window - n))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


class Bottleneck(nn.Module):
  """`[N, H, W, C]` -> `[N, ceil(H / strides), ceil(W / strides), 4 * planes]`; SE gating when `se`."""

  planes: int
  strides: int = 1
  se: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    conv = functools.partial(ConvBN, kernel_init=caffe_kernel_init, dtype=self.dtype)
    out = 4 * self.planes
    y = nn.relu(conv(self.planes, 1, self.strides, name='conv1')(x, train=train, mask=mask))
    y = nn.relu(conv(self.planes, 3, 1, 1, name='conv2')(y, train=train, mask=mask))
    y = conv(out, 1, name='conv3')(y, train=train, mask=mask)
    if self.se:
      dense = functools.partial(nn.Dense, kernel_init=caffe_kernel_init, dtype=self.dtype)
      g = jnp.mean(y, axis=(1, 2), keepdims=True, dtype=jnp.promote_types(self.dtype, jnp.float32))
      g = nn.relu(dense(out // SE_REDUCTION, bias_init=torch_bias_init(out), name='conv4')(g.astype(self.dtype)))
      g = nn.sigmoid(dense(out, bias_init=torch_bias_init(out // SE_REDUCTION), name='conv5')(g))
      y = y * g
    if self.strides != 1 or x.shape[-1] != out:
      x = conv(out, 1, self.strides, name='downsample')(x, train=train, mask=mask)
    return nn.relu(y + x)


class VGGFace2ResNet50(nn.Module):
  """VGGFace2 ResNet-50 (23.5 M params) or, with `se`, SE-ResNet-50 (26.0 M) without the classifier:
  `[N, S, S, 3]` faces in [0, 1], square, S >= 195 (native 224) -> `[N, 2048]`.

  `mask` (`[N]` bool, optional) keeps padded images out of the train-mode BatchNorm statistics.
  `compat_rgb01_norm` selects the study code's input normalisation (config.compat.vggface2_rgb01_norm).
  `dtype` is the compute dtype (params float32).
  """

  se: bool = False
  compat_rgb01_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2] or x.shape[1] < MIN_SIZE:
      raise ValueError(f'VGGFace2ResNet50 needs square [N, S, S, 3] faces with S >= {MIN_SIZE} (its 7x7 average '
                       f'pool needs a 7x7 last map; native 224), got {list(x.shape)}')
    bn_mask = None if mask is None else mask[:, None, None, None]
    x = vggface2_normalize(x, self.compat_rgb01_norm).astype(self.dtype)
    x = ConvBN(64, 7, 2, 3, kernel_init=caffe_kernel_init, dtype=self.dtype, name='conv1')(
        x, train=train, mask=bn_mask)
    x = max_pool_ceil(nn.relu(x), 3, 2)
    for i, (planes, blocks, stride) in enumerate(LAYERS):
      for j in range(blocks):
        x = Bottleneck(planes, stride if j == 0 else 1, self.se, self.dtype, name=f'layer{i + 1}_{j}')(
            x, train=train, mask=bn_mask)
    x = nn.avg_pool(x, (7, 7), strides=(1, 1))
    return jnp.mean(x, axis=(1, 2), dtype=jnp.promote_types(self.dtype, jnp.float32)).astype(self.dtype)


def from_torch(sd: StateDictReader, se: bool = False) -> dict[str, dict]:
  """Variables from a cydonia999/VGGFace2-pytorch `resnet50` (or, with `se`, `senet50`) state dict; the
  classifier `fc.*` is not read. Oxford's `resnet50_ft_weight.pkl` etc. hold these names as numpy arrays
  (`torch_convert.read_torch_checkpoint` reads them)."""
  params, stats = {}, {}

  def conv_bn(conv: str, bn: str) -> tuple[dict, dict]:
    bn_params, bn_stats = sd.batch_norm(bn)
    return {'conv': sd.conv(conv), 'bn': bn_params}, {'bn': bn_stats}

  def dense_1x1(prefix: str) -> dict:
    return {'kernel': conv_kernel(sd[f'{prefix}.weight'])[0, 0], 'bias': sd[f'{prefix}.bias']}

  params['conv1'], stats['conv1'] = conv_bn('conv1', 'bn1')
  for i, (_, blocks, _) in enumerate(LAYERS):
    for j in range(blocks):
      prefix, p, s = f'layer{i + 1}.{j}', {}, {}
      for k in (1, 2, 3):
        p[f'conv{k}'], s[f'conv{k}'] = conv_bn(f'{prefix}.conv{k}', f'{prefix}.bn{k}')
      if j == 0:  # every layer's first block changes the shape
        p['downsample'], s['downsample'] = conv_bn(f'{prefix}.downsample.0', f'{prefix}.downsample.1')
      if se:
        p['conv4'], p['conv5'] = dense_1x1(f'{prefix}.conv4'), dense_1x1(f'{prefix}.conv5')
      params[f'layer{i + 1}_{j}'], stats[f'layer{i + 1}_{j}'] = p, s
  return {'params': params, 'batch_stats': stats}
