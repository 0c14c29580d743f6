"""IR-50 face CNN of LFAN (spec lfan 2.1): `[N, 40, 40, 3]` uint8-range RGB -> `[N, 512]` L2-normalised.

  input layer   Conv3x3(3 -> 64) + BN + PReLU                                   40 x 40
  body          bottleneck_IR units: 3 x 64 (stride 1), 4 x 128, 14 x 256, 3 x 512 (stages 2-4 start at
                stride 2)                                                       40 -> 40 -> 20 -> 10 -> 5
  head          BN2d -> Dropout(0.4) -> flatten -> Dense(5*5*512 -> 512) -> BN1d -> x / ||x||
A unit is `BN -> Conv3x3 -> PReLU -> Conv3x3(stride) -> BN` plus a shortcut (identity subsampling if the
width is unchanged, else Conv1x1(stride) + BN). BatchNorms: eps 1e-5, PyTorch momentum 0.1.

Gradual release (spec lfan 4): `released` (static) is the number of layer groups that train, in the order
`RELEASE_GROUPS`: the head, then stage 4, then the last three units of stage 3. Everything before the first
released unit runs with BatchNorm on running averages under `stop_gradient` (`frozen_bn_train_mode`, lfan bug
1, runs the frozen BatchNorms and the frozen head's dropout in train mode instead, as the reference did).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax.models.backbones.mobilefacenet import PReLU
from affjax.models.layers import torch_dense, torch_kernel_init
from affjax.models.torch_convert import StateDictReader

Array = jax.Array

WIDTHS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)  # of each stage's first unit
IR50_UNITS = (3, 4, 14, 3)  # units per stage; fewer (e.g. (1, 1, 1, 1)) only for quick tests
# Release order after the head: all of stage 4, then the last three units of stage 3 (11-13 in IR-50).
RELEASE_GROUPS = ('head', 'stage4', 'stage3_last3')
HEAD_DROPOUT = 0.4


def first_trainable_unit(released: int, stage_units: tuple[int, ...] = IR50_UNITS) -> int:
  """Index of the first body unit that trains when `released` groups are released (the unit count: none)."""
  if not 0 <= released <= len(RELEASE_GROUPS):
    raise ValueError(f'released={released} groups: IR-50 has {len(RELEASE_GROUPS)} groups {RELEASE_GROUPS}')
  total = sum(stage_units)
  return total - (stage_units[3] if released >= 2 else 0) - (min(3, stage_units[2]) if released >= 3 else 0)


def unit_specs(stage_units: tuple[int, ...] = IR50_UNITS) -> list[tuple[int, int, int]]:
  """(input width, width, stride) of every body unit, in order."""
  specs, c_in = [], 64
  for width, units, stride in zip(WIDTHS, stage_units, STRIDES):
    for u in range(units):
      specs.append((c_in, width, stride if u == 0 else 1))
      c_in = width
  return specs


def _bn(name: str, train: bool, dtype: Any) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), stride, padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=torch_kernel_init, dtype=dtype, name=name)


class BottleneckIR(nn.Module):
  """One bottleneck_IR unit, `[N, H, W, C] -> [N, H/stride, W/stride, features]`."""

  features: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    if x.shape[-1] == self.features:
      shortcut = x[:, ::self.strides, ::self.strides]  # MaxPool2d(kernel 1, stride)
    else:
      shortcut = _conv(self.features, 1, self.strides, 'shortcut_conv', self.dtype)(x)
      shortcut = _bn('shortcut_bn', train, self.dtype)(shortcut, mask=mask)
    y = _bn('bn1', train, self.dtype)(x, mask=mask)
    y = _conv(self.features, 3, 1, 'conv1', self.dtype)(y)
    y = PReLU(name='prelu')(y)
    y = _conv(self.features, 3, self.strides, 'conv2', self.dtype)(y)
    y = _bn('bn2', train, self.dtype)(y, mask=mask)
    return y + shortcut


class IR50(nn.Module):
  """IR-50 embedding network (37.3 M parameters at 40 x 40), `[N, S, S, 3]` in [0, 255] -> `[N, 512]`, unit norm.

  `mask` (`[N]` bool, optional) keeps padded images out of train-mode BatchNorm statistics. `released` is the
  number of trainable layer groups (0: the whole network is frozen; 3: the head, stage 4 and stage-3 units
  11-13 train). `dtype` is the compute dtype (parameters float32).
  """

  released: int = len(RELEASE_GROUPS)
  frozen_bn_train_mode: bool = False
  dtype: Any = jnp.float32
  stage_units: tuple[int, ...] = IR50_UNITS

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] % 8 or x.shape[2] % 8:
      raise ValueError(f'IR50 needs [N, H, W, 3] faces with H and W multiples of 8, got {list(x.shape)}')
    first = first_trainable_unit(self.released, self.stage_units)
    num_units = sum(self.stage_units)
    head_trains = self.released >= 1
    frozen_train = train and self.frozen_bn_train_mode
    bn_mask = None if mask is None else mask[:, None, None, None]
    x = (x.astype(self.dtype) / 255.0 - 0.5) / 0.5
    x = _conv(64, 3, 1, 'input_conv', self.dtype)(x)
    x = _bn('input_bn', frozen_train, self.dtype)(x, mask=bn_mask)
    x = PReLU(name='input_prelu')(x)
    for i, (_, width, stride) in enumerate(unit_specs(self.stage_units)):
      if i == first:
        x = jax.lax.stop_gradient(x)
      unit_train = train if i >= first else frozen_train
      x = BottleneckIR(width, stride, self.dtype, name=f'unit{i}')(x, train=unit_train, mask=bn_mask)
    if first == num_units:
      x = jax.lax.stop_gradient(x)
    head_train = train if head_trains else frozen_train
    x = _bn('head_bn2d', head_train, self.dtype)(x, mask=bn_mask)
    x = nn.Dropout(HEAD_DROPOUT, deterministic=not head_train)(x)
    x = x.reshape(x.shape[0], -1)
    x = torch_dense(512, x.shape[-1], dtype=self.dtype, name='head_dense')(x)
    x = _bn('head_bn1d', head_train, self.dtype)(x, mask=None if mask is None else mask[:, None])
    x = x.astype(jnp.float32)
    out = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return out if head_trains else jax.lax.stop_gradient(out)


def from_torch(sd: StateDictReader) -> dict[str, dict]:
  """Variables from a PyTorch IR-50 state dict with the InsightFace module names `input_layer.{0,1,2}`,
  `body.<i>.res_layer.{0,1,2,3,4}`, `body.<i>.shortcut_layer.{0,1}`, `output_layer.{0,3,4}` (the flatten order
  of the head's Dense is permuted from (C, H, W) to (H, W, C)); an unused classifier (`logits`) is left out. The
  body's units are read from the state dict (any `stage_units`)."""
  params, stats = {}, {}
  params['input_conv'] = sd.conv('input_layer.0')
  params['input_bn'], stats['input_bn'] = sd.batch_norm('input_layer.1')
  params['input_prelu'] = {'negative_slope': sd['input_layer.2.weight']}
  num_units = 0
  while f'body.{num_units}.res_layer.1.weight' in sd:
    num_units += 1
  for i in range(num_units):
    c_in, width = sd[f'body.{i}.res_layer.0.weight'].shape[0], sd[f'body.{i}.res_layer.1.weight'].shape[0]
    p, s = {}, {}
    prefix = f'body.{i}.res_layer'
    p['bn1'], s['bn1'] = sd.batch_norm(f'{prefix}.0')
    p['conv1'] = sd.conv(f'{prefix}.1')
    p['prelu'] = {'negative_slope': sd[f'{prefix}.2.weight']}
    p['conv2'] = sd.conv(f'{prefix}.3')
    p['bn2'], s['bn2'] = sd.batch_norm(f'{prefix}.4')
    if c_in != width:
      p['shortcut_conv'] = sd.conv(f'body.{i}.shortcut_layer.0')
      p['shortcut_bn'], s['shortcut_bn'] = sd.batch_norm(f'body.{i}.shortcut_layer.1')
    params[f'unit{i}'], stats[f'unit{i}'] = p, s
  params['head_bn2d'], stats['head_bn2d'] = sd.batch_norm('output_layer.0')
  w = sd['output_layer.3.weight']  # [512, C * H * W], flattened in (C, H, W) order
  c = WIDTHS[-1]
  side = int(round(np.sqrt(w.shape[1] // c)))
  if c * side * side != w.shape[1]:
    raise ValueError(f'{sd.source}: output_layer.3.weight has {w.shape[1]} inputs, not 512 x S x S')
  kernel = w.reshape(w.shape[0], c, side, side).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
  params['head_dense'] = {'kernel': kernel, 'bias': sd['output_layer.3.bias']}
  params['head_bn1d'], stats['head_bn1d'] = sd.batch_norm('output_layer.4')
  return {'params': params, 'batch_stats': stats}
