"""InceptionResnetV1 face embedder (facenet-pytorch's layout): `[N, S, S, 3]` faces in [0, 1] -> `[N, 512]`
unit vectors (spec rnn_attn 2.1), S >= 75 (112 and 160 in the study).

Layout (spatial size at S = 112 / 160):
  stem: 3x3 s2 (32) -> 3x3 (32) -> 3x3 p1 (64) -> max-pool 3 s2 -> 1x1 (80) -> 3x3 (192) -> 3x3 s2 (256)  11 / 17
  -> 5 x block35 (scale 0.17) -> mixed_6a (896)                                                          5 / 8
  -> 10 x block17 (scale 0.10) -> mixed_7a (1792)                                                        2 / 3
  -> 5 x block8 (scale 0.20) -> block8 (scale 1, no ReLU) -> global average pool -> Dropout(0.6)
  -> Dense(1792 -> 512, no bias) -> BatchNorm -> L2 normalisation.
Every conv of a branch is conv (no bias) + BatchNorm (eps 1e-3) + ReLU; a residual block concatenates its
branches, projects them back with a 1x1 conv (bias), scales and adds the input (then ReLU). Unpadded convs and
max-pools drop what does not fill a window (PyTorch floor mode). Inputs are normalised as (x - 0.5) / 0.5.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.layers import ConvBN, torch_dense, torch_kernel_init
from affjax.models.torch_convert import StateDictReader, conv_kernel

Array = jax.Array

BN_EPS = 1e-3  # facenet-pytorch (from the TensorFlow original) uses 1e-3 in every BatchNorm
MIN_SIZE = 75  # the smallest input whose mixed_7a map is not empty


class Conv(NamedTuple):
  """One conv + BN + ReLU: output channels, kernel, stride, zero padding (int or (h, w))."""
  features: int
  kernel: int | tuple[int, int] = 1
  stride: int = 1
  padding: int | tuple[int, int] = 0


Branches = tuple[tuple[Conv, ...], ...]

STEM = (('conv2d_1a', Conv(32, 3, 2)), ('conv2d_2a', Conv(32, 3)), ('conv2d_2b', Conv(64, 3, 1, 1)), None,
        ('conv2d_3b', Conv(80)), ('conv2d_4a', Conv(192, 3)), ('conv2d_4b', Conv(256, 3, 2)))  # None: max-pool
BLOCK35: Branches = ((Conv(32),), (Conv(32), Conv(32, 3, 1, 1)), (Conv(32), Conv(32, 3, 1, 1), Conv(32, 3, 1, 1)))
BLOCK17: Branches = ((Conv(128),), (Conv(128), Conv(128, (1, 7), 1, (0, 3)), Conv(128, (7, 1), 1, (3, 0))))
BLOCK8: Branches = ((Conv(192),), (Conv(192), Conv(192, (1, 3), 1, (0, 1)), Conv(192, (3, 1), 1, (1, 0))))
MIXED_6A: Branches = ((Conv(384, 3, 2),), (Conv(192), Conv(192, 3, 1, 1), Conv(256, 3, 2)))
MIXED_7A: Branches = ((Conv(256), Conv(384, 3, 2)), (Conv(256), Conv(256, 3, 2)),
                      (Conv(256), Conv(256, 3, 1, 1), Conv(256, 3, 2)))


class Stage(NamedTuple):
  """`repeats` residual blocks named f'{name}_{i}' (PyTorch f'{name}.{i}'), then an optional reduction block."""
  name: str
  branches: Branches
  scale: float
  repeats: int
  reduction: tuple[str, Branches] | None


STAGES = (Stage('repeat_1', BLOCK35, 0.17, 5, ('mixed_6a', MIXED_6A)),
          Stage('repeat_2', BLOCK17, 0.10, 10, ('mixed_7a', MIXED_7A)),
          Stage('repeat_3', BLOCK8, 0.20, 5, None))


def branch_names(branches: Branches) -> list[list[tuple[str, str]]]:
  """(Flax name, PyTorch module path) of every conv: a one-conv branch k is 'branch{k}', a longer one is a
  Sequential whose j-th conv is 'branch{k}_{j}' ('branch{k}.{j}' in PyTorch)."""
  return [[(f'branch{k}', f'branch{k}')] if len(convs) == 1 else
          [(f'branch{k}_{j}', f'branch{k}.{j}') for j in range(len(convs))] for k, convs in enumerate(branches)]


def _conv_bn_relu(conv: Conv, name: str, dtype: Any, x: Array, train: bool, mask: Array | None) -> Array:
  """Called inside a compact method: the ConvBN becomes the caller's child `name`."""
  y = ConvBN(conv.features, conv.kernel, conv.stride, conv.padding, BN_EPS, dtype=dtype, name=name)(
      x, train=train, mask=mask)
  return nn.relu(y)


def _apply_branches(branches: Branches, dtype: Any, x: Array, train: bool, mask: Array | None) -> list[Array]:
  outs = []
  for convs, names in zip(branches, branch_names(branches)):
    y = x
    for conv, (name, _) in zip(convs, names):
      y = _conv_bn_relu(conv, name, dtype, y, train, mask)
    outs.append(y)
  return outs


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """`x / max(||x||, eps)` over the last axis (PyTorch `F.normalize`), with a finite gradient at x = 0
  (where `jnp.linalg.norm`'s is NaN, e.g. a train-mode BatchNorm over a single valid image)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _max_pool(x: Array) -> Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class ResidualBlock(nn.Module):
  """block35 / block17 / block8: `x + scale * conv1x1(concat(branches(x)))` [-> ReLU], `[N, H, W, C]` kept."""

  branches: Branches
  scale: float
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    y = jnp.concatenate(_apply_branches(self.branches, self.dtype, x, train, mask), axis=-1)
    y = torch_dense(x.shape[-1], y.shape[-1], dtype=self.dtype, name='conv2d')(y)
    x = x + self.scale * y
    return nn.relu(x) if self.relu else x


class ReductionBlock(nn.Module):
  """mixed_6a / mixed_7a: concat(branches(x), max-pool 3 s2 (x)), halving the spatial size."""

  branches: Branches
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    return jnp.concatenate([*_apply_branches(self.branches, self.dtype, x, train, mask), _max_pool(x)], axis=-1)


class InceptionResnetV1(nn.Module):
  """InceptionResnetV1 (23.5 M params), `[N, S, S, 3]` faces in [0, 1] (S >= 75) -> `[N, 512]` L2-normalised.

  `mask` (`[N]` bool, optional) keeps padded images out of the train-mode BatchNorm statistics. In train
  mode the pooled features pass Dropout(`dropout_rate`), which needs a 'dropout' PRNG stream. `dtype` is
  the compute dtype (params float32).
  """

  dropout_rate: float = 0.6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f'InceptionResnetV1 needs [N, S, S, 3] faces with S >= {MIN_SIZE}, got {list(x.shape)}')
    bn_mask = None if mask is None else mask[:, None, None, None]
    x = (x.astype(self.dtype) - 0.5) / 0.5
    for layer in STEM:
      x = _max_pool(x) if layer is None else _conv_bn_relu(layer[1], layer[0], self.dtype, x, train, bn_mask)
    for stage in STAGES:
      for j in range(stage.repeats):
        x = ResidualBlock(stage.branches, stage.scale, dtype=self.dtype, name=f'{stage.name}_{j}')(
            x, train=train, mask=bn_mask)
      if stage.reduction is not None:
        name, branches = stage.reduction
        x = ReductionBlock(branches, self.dtype, name=name)(x, train=train, mask=bn_mask)
    x = ResidualBlock(BLOCK8, 1.0, relu=False, dtype=self.dtype, name='block8')(x, train=train, mask=bn_mask)
    x = jnp.mean(x, axis=(1, 2), dtype=jnp.promote_types(self.dtype, jnp.float32)).astype(self.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(512, use_bias=False, kernel_init=torch_kernel_init, dtype=self.dtype, name='last_linear')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPS, dtype=self.dtype,
                     name='last_bn')(x, mask=None if mask is None else mask[:, None])
    return l2_normalize(x.astype(jnp.promote_types(self.dtype, jnp.float32))).astype(self.dtype)


def from_torch(sd: StateDictReader) -> dict[str, dict]:
  """Variables from a facenet-pytorch `InceptionResnetV1` state dict (e.g. its VGGFace2 checkpoint
  `20180402-114759-vggface2.pt`); the classifier `logits.*`, if present, is not read."""
  params, stats = {}, {}

  def conv_bn(torch_prefix: str) -> tuple[dict, dict]:
    bn, bn_stats = sd.batch_norm(f'{torch_prefix}.bn')
    return {'conv': sd.conv(f'{torch_prefix}.conv'), 'bn': bn}, {'bn': bn_stats}

  def block(torch_prefix: str, branches: Branches, residual: bool) -> tuple[dict, dict]:
    p, s = {}, {}
    for names in branch_names(branches):
      for flax_name, torch_name in names:
        p[flax_name], s[flax_name] = conv_bn(f'{torch_prefix}.{torch_name}')
    if residual:
      p['conv2d'] = {'kernel': conv_kernel(sd[f'{torch_prefix}.conv2d.weight'])[0, 0],
                     'bias': sd[f'{torch_prefix}.conv2d.bias']}
    return p, s

  for layer in STEM:
    if layer is not None:
      params[layer[0]], stats[layer[0]] = conv_bn(layer[0])
  for stage in STAGES:
    for j in range(stage.repeats):
      name = f'{stage.name}_{j}'
      params[name], stats[name] = block(f'{stage.name}.{j}', stage.branches, residual=True)
    if stage.reduction is not None:
      name, branches = stage.reduction
      params[name], stats[name] = block(name, branches, residual=False)
  params['block8'], stats['block8'] = block('block8', BLOCK8, residual=True)
  params['last_linear'] = sd.dense('last_linear', bias=False)
  params['last_bn'], stats['last_bn'] = sd.batch_norm('last_bn')
  return {'params': params, 'batch_stats': stats}
