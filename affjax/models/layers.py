"""Small pieces shared by the models: name look-up, PyTorch-style initialisers, activations, sinusoidal positional
encoding, and convolutions (general, depthwise, 1x1) and max pooling with CPU-friendly implementations."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax.models import cpu_kernels, depthwise_cpu
from affjax.models.batch_norm import batch_norm

Array = jax.Array
Padding = int | Sequence[tuple[int, int]]


def lookup(table: Mapping[str, Any] | Collection[Any], key: Any, field: str) -> Any:
  """`table[key]` for a mapping, `key` itself for a plain collection of allowed values.

  Raises ValueError naming `field` (e.g. "config.model.act") when `key` is not allowed.
  """
  if key not in table:
    raise ValueError(f'{field}={key!r} is not one of {list(table)}')
  return table[key] if isinstance(table, Mapping) else key


# ----------------------------------------------------------------------------- initialisers
def symmetric_uniform(bound: float) -> Callable[..., Array]:
  """Initialiser drawing U(-bound, bound)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# PyTorch's default Linear/Conv weight init, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)),
# with fan_in = receptive field x input channels (Flax's WIO/HWIO layouts: in_axis=-2).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int) -> Callable[..., Array]:
  """PyTorch's default Linear/Conv bias init, U(+-1/sqrt(fan_in))."""
  return symmetric_uniform(1.0 / np.sqrt(fan_in))


def torch_dense(features: int, fan_in: int, **kwargs) -> nn.Dense:
  """`nn.Dense` initialised like `torch.nn.Linear(fan_in, features)`."""
  return nn.Dense(features, kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in), **kwargs)


# ----------------------------------------------------------------------------- activations
ACTIVATIONS: Mapping[str, Callable[[Array], Array]] = {
    'gelu': lambda x: nn.gelu(x, approximate=False),  # PyTorch nn.GELU(): exact erf
    'selu': nn.selu,
    'relu': nn.relu,
}


def activation(name: str, field: str = 'act') -> Callable[[Array], Array]:
  """Activation function by name ('gelu' = exact erf GELU, 'selu', 'relu')."""
  return lookup(ACTIVATIONS, name, field)


# ----------------------------------------------------------------------------- positional encoding
def sinusoidal_pe(length: int, d: int) -> np.ndarray:
  """Fixed positional encoding `[length, d]` (float32): channel 2i is sin(p * 10000^(-2i/d)),
  channel 2i+1 is cos of the same angle. Added to the features without sqrt(d) scaling."""
  pos = np.arange(length, dtype=np.float64)[:, None]
  freq = np.exp(np.arange(0, d, 2, dtype=np.float64) * (-np.log(10000.0) / d))
  pe = np.zeros((length, d), np.float64)
  pe[:, 0::2] = np.sin(pos * freq)
  pe[:, 1::2] = np.cos(pos * freq[: d // 2])
  return pe.astype(np.float32)


# ----------------------------------------------------------------------------- convolution
def _tap_inputs(x: Array, taps_shape: Sequence[int], strides: Sequence[int],
                padding: Sequence[tuple[int, int]]) -> Array:
  """`[N, *S, Cin]` -> `[N, *S_out, prod(K) * Cin]`: for each kernel tap (row-major over K), the strided slice of
  the zero-padded x that it meets, concatenated over channels."""
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], taps_shape, strides)]
  taps = [x[(slice(None),) + tuple(slice(o, o + (m - 1) * s + 1, s) for o, m, s in zip(offset, out, strides))]
          for offset in itertools.product(*map(range, taps_shape))]
  return jnp.concatenate(taps, axis=-1)


def conv_taps(x: Array, kernel: Array, strides: Sequence[int], padding: Sequence[tuple[int, int]]) -> Array:
  """N-d convolution as one matmul: x `[N, *S, Cin]`, kernel `[*K, Cin, Cout]` -> `[N, *S_out, Cout]`, with the
  inputs of each of the prod(K) taps a strided slice of the zero-padded x, concatenated over channels."""
  return _tap_inputs(x, kernel.shape[:-2], strides, padding) @ kernel.reshape(-1, kernel.shape[-1])


def _channels_last(ndim: int) -> tuple[str, str, str]:
  spatial = 'DHW'[3 - (ndim - 2):]
  return f'N{spatial}C', f'{spatial}IO', f'N{spatial}C'


def _xla_conv(x: Array, kernel: Array, strides: tuple[int, ...], padding: tuple[tuple[int, int], ...]) -> Array:
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_channels_last(x.ndim))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_matmul_kernel_grad(x: Array, kernel: Array, strides: tuple[int, ...],
                             padding: tuple[tuple[int, int], ...]) -> Array:
  """XLA's channels-last convolution, whose kernel gradient (below) is one matmul over the taps."""
  return _xla_conv(x, kernel, strides, padding)


def _conv_matmul_kernel_grad_fwd(x, kernel, strides, padding):
  return _xla_conv(x, kernel, strides, padding), (x, kernel)


def _conv_matmul_kernel_grad_bwd(strides, padding, residuals, g):
  """The input gradient is XLA's own (a convolution of the cotangent); the kernel gradient is `taps^T @ g` over
  every output position, with both operands materialised first (the barrier) so that XLA runs it as one dot
  instead of fusing their producers into a transposing copy. XLA:CPU's own kernel gradient is a convolution with
  a window as large as the image (or the whole 1-D sequence), several times slower (experiments/train_step_profile)."""
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _xla_conv(x, kernel, strides, padding), x)
  taps = _tap_inputs(x, kernel.shape[:-2], strides, padding)
  taps, g2 = jax.lax.optimization_barrier((taps.reshape(-1, taps.shape[-1]), g.reshape(-1, g.shape[-1])))
  return input_vjp(g)[0], jnp.einsum('mc,mf->cf', taps, g2).reshape(kernel.shape)


_conv_matmul_kernel_grad.defvjp(_conv_matmul_kernel_grad_fwd, _conv_matmul_kernel_grad_bwd)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int], padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         precision=None) -> Array:
  """`jax.lax.conv_general_dilated`, for `nn.Conv(..., conv_general_dilated=...)`. On CPU a plain channels-last
  convolution (explicit padding, no dilation, one group; what `nn.Conv` passes) computes the same output and input
  gradient, and its kernel gradient as one matmul over the kernel taps (`_conv_matmul_kernel_grad_bwd`)."""
  plain = (jax.default_backend() == 'cpu' and feature_group_count == 1 and precision is None
           and not isinstance(padding, str) and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
           and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _channels_last(lhs.ndim)))
  if not plain:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision)
  return _conv_matmul_kernel_grad(lhs, rhs, tuple(window_strides), tuple((int(a), int(b)) for a, b in padding))


# ----------------------------------------------------------------------------- depthwise conv
DEPTHWISE_IMPLS = ('auto', 'grouped', 'shifted', 'native')


def _pairs(padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  (t, b), (l, r) = padding
  return ((int(t), int(b)), (int(l), int(r)))


def _depthwise_grouped(x: Array, kernel: Array, stride: int, padding) -> Array:
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])


def _strided_tap(xp: Array, i: int, j: int, stride: int, ho: int, wo: int) -> Array:
  """`xp[:, i::stride, j::stride]` cut to `[N, ho, wo, C]`: the inputs that kernel tap (i, j) meets."""
  n, c = xp.shape[0], xp.shape[-1]
  return jax.lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                       (1, stride, stride, 1))


def _sum_of_taps(xp: Array, kernel: Array, stride: int, ho: int, wo: int) -> Array:
  """sum over taps (i, j) of `_strided_tap(xp, i, j) * kernel[i, j]` (kernel `[kh, kw, C]`), in at least float32."""
  acc_dtype = jnp.promote_types(xp.dtype, jnp.float32)
  out = jnp.zeros((xp.shape[0], ho, wo, xp.shape[-1]), acc_dtype)
  for i in range(kernel.shape[0]):
    for j in range(kernel.shape[1]):
      out = out + _strided_tap(xp, i, j, stride, ho, wo).astype(acc_dtype) * kernel[i, j].astype(acc_dtype)
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shifted(x: Array, kernel: Array, stride: int, padding) -> Array:
  """The taps as strided slices of the padded input times their per-channel weights, summed. Its VJP (below)
  writes both gradients the same way; XLA's own transpose of the slices (interior pads of the cotangent, one
  reduction per tap over fused products) is several times slower on CPU (experiments/vs_upstream_cpu.md)."""
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  kh, kw = kernel.shape[:2]
  ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
  return _sum_of_taps(xp, kernel[:, :, 0], stride, ho, wo).astype(x.dtype)


def _depthwise_shifted_fwd(x, kernel, stride, padding):
  return _depthwise_shifted(x, kernel, stride, padding), (x, kernel)


def _depthwise_shifted_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  (top, bottom), (left, right) = padding
  kh, kw = kernel.shape[:2]
  h, w = x.shape[1:3]
  ho, wo = g.shape[1:3]
  # Input gradient: the cotangent dilated by the stride, padded so that a stride-1 pass of the flipped kernel
  # lands output row y on input row y (low pads may be negative, i.e. crops).
  low_h, low_w = kh - 1 - top, kw - 1 - left
  pad_h = (low_h, h + kh - 1 - low_h - stride * (ho - 1) - 1, stride - 1)
  pad_w = (low_w, w + kw - 1 - low_w - stride * (wo - 1) - 1, stride - 1)
  gp = jax.lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), pad_h, pad_w, (0, 0, 0)))
  dx = _sum_of_taps(gp, kernel[::-1, ::-1, 0], 1, h, w).astype(x.dtype)
  # Kernel gradient: per tap, its inputs times the cotangent summed over N, H, W; the barrier keeps XLA from
  # fusing the padding and the cotangent's producer into each of the kh * kw reductions.
  xp, g = jax.lax.optimization_barrier((jnp.pad(x, ((0, 0), *padding, (0, 0))), g))
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  dk = jnp.stack([jnp.stack([jnp.sum(_strided_tap(xp, i, j, stride, ho, wo).astype(acc_dtype) * g.astype(acc_dtype),
                                     axis=(0, 1, 2)) for j in range(kw)]) for i in range(kh)])
  return dx, dk[:, :, None, :].astype(kernel.dtype)


_depthwise_shifted.defvjp(_depthwise_shifted_fwd, _depthwise_shifted_bwd)


def depthwise_conv2d(x: Array, kernel: Array, stride: int = 1, padding: Padding = 0,
                     impl: str = 'auto') -> Array:
  """Depthwise 2-D convolution (channel multiplier 1, no bias).

  Args:
    x: `[N, H, W, C]`.
    kernel: `[kh, kw, 1, C]` (HWIO with one input channel per group, as Flax stores it).
    stride: the same stride along H and W.
    padding: zero padding, an int (both sides of H and W, PyTorch style) or ((top, bottom), (left, right)).
    impl: 'grouped' = XLA's grouped convolution (`feature_group_count=C`); 'shifted' = kh*kw
      strided slices multiplied by the per-channel taps and summed (accumulated in at least float32), with
      both gradients written the same way (a custom VJP); 'native' = affjax's XLA:CPU kernels
      (`depthwise_cpu`, float32); 'auto' = 'native' where `cpu_kernels.usable`, else on CPU 'shifted'
      (XLA:CPU's grouped convolution is very slow), elsewhere 'grouped'.
  Returns:
    `[N, Ho, Wo, C]` in x's dtype.
  """
  impl = lookup(DEPTHWISE_IMPLS, impl, 'depthwise_impl')
  if impl == 'auto':
    impl = 'grouped'
    if jax.default_backend() == 'cpu':
      impl = 'native' if cpu_kernels.usable(x.dtype) else 'shifted'
  if impl == 'native' and x.dtype != jnp.float32:
    raise ValueError(f"depthwise_impl='native' computes in float32, the input is {x.dtype}: use 'auto' (the "
                     "shifted form for other dtypes) or model.dtype='float32'")
  kernel = kernel.astype(x.dtype)
  fn = {'grouped': _depthwise_grouped, 'shifted': _depthwise_shifted,
        'native': depthwise_cpu.depthwise_conv2d}[impl]
  return fn(x, kernel, stride, _pairs(padding))


@jax.custom_vjp
def _pointwise_materialized(x: Array, kernel: Array) -> Array:
  return jnp.einsum('...c,cd->...d', x, kernel)


def _pointwise_materialized_fwd(x, kernel):
  return _pointwise_materialized(x, kernel), (x, kernel)


def _pointwise_materialized_bwd(residuals, g):
  """The autodiff gradients, with the input and the cotangent materialised (an optimisation barrier) first:
  otherwise XLA:CPU fuses the cotangent's producer (a BatchNorm backward) into a transposing copy for the
  weight gradient, several times slower than the matmul itself (experiments/vs_upstream_cpu.md)."""
  x, kernel = residuals
  c, f = kernel.shape
  x2, g2 = jax.lax.optimization_barrier((x.reshape(-1, c), g.reshape(-1, f)))
  return (g2 @ kernel.T).reshape(x.shape), jnp.einsum('mc,mf->cf', x2, g2)


_pointwise_materialized.defvjp(_pointwise_materialized_fwd, _pointwise_materialized_bwd)


def pointwise_conv(x: Array, kernel: Array) -> Array:
  """`[..., C] x [C, F] -> [..., F]`; on CPU with the gradients of `_pointwise_materialized_bwd` (the same
  numbers), elsewhere plain autodiff."""
  if jax.default_backend() == 'cpu':
    return _pointwise_materialized(x, kernel)
  return jnp.einsum('...c,cd->...d', x, kernel)


class PointwiseConv(nn.Module):
  """1x1 convolution (stride 1, no bias) over `[..., C]` written as a matmul over channels (`pointwise_conv`).

  The kernel is stored `[1, 1, C, features]` (HWIO, as `nn.Conv` stores it). XLA:CPU computes the
  weight gradient of a 1x1 `conv_general_dilated` an order of magnitude slower than that of the
  same contraction as a matmul (experiments/depthwise_conv_cpu.py); on GPU both are one GEMM.
  """

  features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., Array] = torch_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
    dtype = self.dtype or x.dtype
    return pointwise_conv(x.astype(dtype), kernel[0, 0].astype(dtype))


class DepthwiseConv(nn.Module):
  """Depthwise `k x k` conv over `[N, H, W, C]`, kernel param `[k, k, 1, C]`, no bias
  (PyTorch `Conv2d(C, C, k, stride, padding, groups=C, bias=False)`)."""

  kernel_size: int
  strides: int = 1
  padding: Padding = 0
  impl: str = 'auto'
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., Array] = torch_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, 1, x.shape[-1]), self.param_dtype)
    dtype = self.dtype or x.dtype
    return depthwise_conv2d(x.astype(dtype), kernel, self.strides, self.padding, self.impl)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm (momentum 0.9 = PyTorch's 0.1) over `[N, H, W, C]` -> `[N, Ho, Wo, features]`.

  `kernel_size` and `padding` are an int or an (h, w) pair; padding is zeros on both sides of each axis
  (PyTorch `Conv2d(..., padding=p, bias=False)`). An unpadded 1x1 conv is a `PointwiseConv` matmul on the
  stride-subsampled input. Children: 'conv' (kernel HWIO), 'bn'. `mask` (broadcastable to the input,
  e.g. `[N, 1, 1, 1]`) keeps images out of the train-mode BatchNorm statistics.
  """

  features: int
  kernel_size: int | tuple[int, int] = 1
  strides: int = 1
  padding: int | tuple[int, int] = 0
  epsilon: float = 1e-5
  kernel_init: Callable[..., Array] = torch_kernel_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    (kh, kw), (ph, pw), s = np.broadcast_to(self.kernel_size, 2), np.broadcast_to(self.padding, 2), self.strides
    if (kh, kw, ph, pw) == (1, 1, 0, 0):
      x = PointwiseConv(self.features, dtype=self.dtype, kernel_init=self.kernel_init, name='conv')(x[:, ::s, ::s])
    else:
      x = nn.Conv(self.features, (int(kh), int(kw)), s, padding=((int(ph), int(ph)), (int(pw), int(pw))),
                  use_bias=False, kernel_init=self.kernel_init, dtype=self.dtype, name='conv')(x)
    return batch_norm(x, mask, train=train, momentum=0.9, epsilon=self.epsilon, dtype=self.dtype, name='bn')


# ----------------------------------------------------------------------------- max pooling
def max_pool_tiled(x: Array, window: Sequence[int], padding: int | Sequence[int] = 0) -> Array:
  """Max pooling with stride = window (tiles that do not overlap) over the spatial axes of `[N, *S, C]`, padded
  with -inf by `padding` on both sides of each axis, floor mode (a last partial tile is dropped), like
  `nn.max_pool(x, window, strides=window, padding=...)` and PyTorch's `MaxPool1d/2d(k)`.

  Written as a reshape and a running max over each tile's entries that keeps the position of the first
  maximum (row-major), to which the gradient goes, as XLA's select-and-scatter does, but without it: on CPU `nn.max_pool`'s gradient becomes
  an argmax carrying one int32 index array per axis of the input's size and a scatter, several times the cost
  of the pooling itself (experiments/vs_upstream_cpu.md). The same function on every backend.
  """
  window = tuple(int(k) for k in window)
  pads = np.broadcast_to(padding, len(window))
  x = jnp.pad(x, ((0, 0), *[(int(p), int(p)) for p in pads], (0, 0)), constant_values=-jnp.inf)
  out = [n // k for n, k in zip(x.shape[1:-1], window)]
  x = x[(slice(None), *[slice(0, o * k) for o, k in zip(out, window)])]
  return _max_over_tiles(x, window)


def _tiled(x: Array, window: tuple[int, ...]) -> Array:
  """`[N, o1 * k1, ..., C]` -> `[N, o1, k1, o2, k2, ..., C]`."""
  shape = [x.shape[0]]
  for n, k in zip(x.shape[1:-1], window):
    shape += [n // k, k]
  return x.reshape(*shape, x.shape[-1])


def _tile_entry(tiles: Array, offset: tuple[int, ...]) -> Array:
  """The entry at `offset` of every tile, `[N, o1, o2, ..., C]`."""
  return tiles[(slice(None), *[i for o in offset for i in (slice(None), o)])]


def _max_and_argmax(x: Array, window: tuple[int, ...]) -> tuple[Array, Array]:
  """Per tile its maximum and the row-major position of its first maximum (int32), in one pass over the
  entries, so that the position always names the entry whose value was taken."""
  tiles = _tiled(x, window)
  best, position = None, None
  for p, offset in enumerate(np.ndindex(*window)):
    entry = _tile_entry(tiles, offset)
    if best is None:
      best, position = entry, jnp.zeros(entry.shape, jnp.int32)
    else:
      better = entry > best
      best, position = jnp.where(better, entry, best), jnp.where(better, p, position)
  return best, position


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_over_tiles(x: Array, window: tuple[int, ...]) -> Array:
  return _max_and_argmax(x, window)[0]


def _max_over_tiles_fwd(x, window):
  out, position = _max_and_argmax(x, window)
  return out, position


def _max_over_tiles_bwd(window, residuals, g):
  position = residuals
  shape = (position.shape[0], *[o * k for o, k in zip(position.shape[1:-1], window)], position.shape[-1])
  grads = {offset: jnp.where(position == p, g, jnp.zeros((), g.dtype))
           for p, offset in enumerate(np.ndindex(*window))}

  def assemble(prefix: tuple[int, ...]) -> Array:  # stacks the tile entries back into their axes
    if len(prefix) == len(window):
      return grads[prefix]
    return jnp.stack([assemble(prefix + (i,)) for i in range(window[len(prefix)])], axis=len(prefix) + 2)

  return (assemble(()).reshape(shape),)


_max_over_tiles.defvjp(_max_over_tiles_fwd, _max_over_tiles_bwd)
