"""affjax's native XLA:CPU kernels (`csrc/`, built by `setup.py` when a C++ compiler is at hand), for the passes
XLA:CPU runs several times slower than a single read of their operands: the depthwise convolution and its
gradients (`depthwise_cpu`), and train-mode BatchNorm statistics (`masked_moments`).

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


def call(name: str, out_shape: tuple[int, ...], *args: jax.Array, **attrs: int) -> jax.Array:
  """Runs kernel `name` (float32 operands and result; integer attributes)."""
  if not built():
    raise RuntimeError("affjax's native CPU kernels are not built (a C++ compiler is needed at install: "
                       "`pip install -e .` again with g++ present)")
  fn = jax.ffi.ffi_call(f'affjax_{name}', jax.ShapeDtypeStruct(out_shape, jnp.float32), vmap_method='sequential')
  return fn(*args, **{k: np.int64(v) for k, v in attrs.items()})


@jax.custom_vjp
def masked_moments(x: jax.Array, mask: jax.Array) -> jax.Array:
  """`[2, C]`: the sums over `x` `[N, R, C]` float32 of `mask[n] * x` and `mask[n] * x**2` (mask `[N]` float32,
  0 or 1)."""
  return call('masked_moments', (2, x.shape[-1]), x, mask)


def _moments_fwd(x, mask):
  return masked_moments(x, mask), (x, mask)


def _moments_bwd(residuals, g):
  x, mask = residuals
  return mask[:, None, None] * (g[0] + 2 * x * g[1]), jnp.zeros_like(mask)


masked_moments.defvjp(_moments_fwd, _moments_bwd)
