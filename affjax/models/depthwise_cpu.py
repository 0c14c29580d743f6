"""The depthwise 2-D convolution as native XLA:CPU kernels (`csrc/depthwise.cc`, see `cpu_kernels`): the forward
pass, the input gradient and the kernel gradient each read their operands once. XLA:CPU's own forms are several
times slower on MobileFaceNet's shapes, the kernel gradient most of all (experiments/native_kernels_cpu).

`depthwise_conv2d` has the signature of `layers.depthwise_conv2d`'s implementations: x `[N, H, W, C]` float32,
kernel `[kh, kw, 1, C]`, one stride, ((top, bottom), (left, right)) padding.
"""
import functools

import jax

from affjax.models import cpu_kernels


def _output_size(size: int, k: int, stride: int, pads: tuple[int, int]) -> int:
  return (size + pads[0] + pads[1] - k) // stride + 1


def _call(name, out_shape, a, b, stride, padding):
  (top, _), (left, _) = padding
  return cpu_kernels.call(name, out_shape, a, b, stride=stride, pad_top=top, pad_left=left)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
  n, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  out = (n, _output_size(h, kh, stride, padding[0]), _output_size(w, kw, stride, padding[1]), c)
  return _call('depthwise_forward', out, x, kernel[:, :, 0], stride, padding)


def _forward(x, kernel, stride, padding):
  return depthwise_conv2d(x, kernel, stride, padding), (x, kernel)


def _backward(stride, padding, residuals, g):
  x, kernel = residuals
  dx = _call('depthwise_input_grad', x.shape, g, kernel[:, :, 0], stride, padding)
  dk = _call('depthwise_kernel_grad', kernel.shape[:2] + kernel.shape[3:], x, g, stride, padding)
  return dx, dk[:, :, None, :]


depthwise_conv2d.defvjp(_forward, _backward)
