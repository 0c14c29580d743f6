"""affjax's native XLA:CPU kernels (`csrc/`, built by `setup.py` when a C++ compiler is at hand), for the passes
XLA:CPU runs several times slower than a single read of their operands: the depthwise convolution and its
gradients (`depthwise_cpu`), train-mode BatchNorm's sums over positions (`masked_moments`, `normalize`) and the
PReLU's backward pass (`prelu`).

They are used on one CPU device only: a native call has no partitioning rule, so data split over several
devices would be gathered for it.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

try:
  from affjax.models import _cpu_kernels
except ImportError:  # built without a C++ compiler: the callers use their XLA forms
  _cpu_kernels = None


@functools.cache
def built() -> bool:
  """Whether the kernels are built; registers them with XLA the first time."""
  if _cpu_kernels is None:
    return False
  for name, capsule in _cpu_kernels.handlers().items():
    jax.ffi.register_ffi_target(f'affjax_{name}', capsule, platform='cpu')
  return True


def usable(dtype) -> bool:
  """Whether a float array of `dtype` takes the native kernels here: float32, on one CPU device, built."""
  return (jax.default_backend() == 'cpu' and jnp.dtype(dtype) == jnp.float32 and jax.device_count() == 1
          and built())


def call(name: str, out_shapes, *args: jax.Array, **attrs: int):
  """Runs kernel `name` (float32 operands and results; integer attributes). `out_shapes`: one shape, or a list
  of shapes for a list of results."""
  if not built():
    raise RuntimeError("affjax's native CPU kernels are not built (a C++ compiler is needed at install: "
                       "`pip install -e .` again with g++ present)")
  structs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), out_shapes,
                         is_leaf=lambda s: isinstance(s, tuple))
  fn = jax.ffi.ffi_call(f'affjax_{name}', structs, vmap_method='sequential')
  return fn(*args, **{k: np.int64(v) for k, v in attrs.items()})


def channel_sums(a: jax.Array, b: jax.Array, center: jax.Array, mask: jax.Array) -> jax.Array:
  """`[2, C]`: the sums over `a`, `b` `[N, R, C]` float32 of `mask[n] * a` and `mask[n] * a * (b - center)`
  (center `[C]`; mask `[N]` float32, 0 or 1)."""
  return call('channel_sums', (2, a.shape[-1]), a, b, center, mask)


@jax.custom_vjp
def masked_moments(x: jax.Array, mask: jax.Array) -> jax.Array:
  """`[2, C]`: the sums over `x` `[N, R, C]` float32 of `mask[n] * x` and `mask[n] * x**2` (mask `[N]`)."""
  return channel_sums(x, x, jnp.zeros(x.shape[-1:], x.dtype), mask)


def _moments_fwd(x, mask):
  return masked_moments(x, mask), (x, mask)


def _moments_bwd(residuals, g):
  x, mask = residuals
  return mask[:, None, None] * (g[0] + 2 * x * g[1]), jnp.zeros_like(mask)


masked_moments.defvjp(_moments_fwd, _moments_bwd)


@jax.custom_vjp
def normalize(x: jax.Array, mean: jax.Array, mul: jax.Array, shift: jax.Array) -> jax.Array:
  """`(x - mean) * mul + shift` over the last axis of `x` `[N, R, C]` float32 (the others `[C]`); its backward
  takes the sums over positions (of the shift's and the mul's gradients) in one native pass."""
  return (x - mean) * mul + shift


def _normalize_fwd(x, mean, mul, shift):
  return normalize(x, mean, mul, shift), (x, mean, mul)


def _normalize_bwd(residuals, g):
  x, mean, mul = residuals
  sums = channel_sums(g, x, mean, jnp.ones(x.shape[:1], x.dtype))
  return g * mul, -mul * sums[0], sums[1], sums[0]


normalize.defvjp(_normalize_fwd, _normalize_bwd)


@jax.custom_vjp
def prelu(x: jax.Array, slope: jax.Array) -> jax.Array:
  """Per-channel PReLU over the last axis of float32 `x` (`where(x >= 0, x, slope * x)`, slope `[C]`); its
  backward computes both gradients in one native pass."""
  return jnp.where(x >= 0, x, slope * x)


def _prelu_fwd(x, slope):
  return prelu(x, slope), (x, slope)


def _prelu_bwd(residuals, g):
  x, slope = residuals
  c = x.shape[-1]
  dx, dslope = call('prelu_grad', [(x.size // c, c), (c,)], x.reshape(-1, c), g.reshape(-1, c), slope)
  return dx.reshape(x.shape), dslope


prelu.defvjp(_prelu_fwd, _prelu_bwd)
