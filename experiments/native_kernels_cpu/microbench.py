"""The depthwise convolution and the dense 3x3 convolution on this CPU: affjax's forms (native kernels, the
shifted XLA form, XLA's own convolution) against PyTorch (oneDNN, channels-last), forward and forward + backward,
medians of 7 calls after 2 warm-up calls.

  PYTHONPATH=. python experiments/native_kernels_cpu/microbench.py   # prints a markdown table
"""
import time

import jax
import numpy as np
import torch

from affjax.models import layers

DEPTHWISE = [((32, 56, 56, 128), 1), ((32, 56, 56, 128), 2), ((32, 28, 28, 256), 1), ((32, 14, 14, 512), 1)]
DENSE = [(16, 48, 48, 64, 64), (16, 12, 12, 128, 128), (16, 56, 56, 64, 64)]  # N, H, W, C in, C out; 3x3, pad 1


def median_ms(fn) -> float:
  fn()
  fn()
  times = []
  for _ in range(7):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def jax_pair(conv, x, kernel):
  """(forward, forward + both gradients) of `conv(x, kernel)` as timed callables."""
  fwd = jax.jit(conv)
  grad = jax.jit(jax.grad(lambda x, k: (conv(x, k) ** 2).sum(), argnums=(0, 1)))
  return (lambda: jax.block_until_ready(fwd(x, kernel))), (lambda: jax.block_until_ready(grad(x, kernel)))


def torch_pair(x_shape, w_shape, stride, groups):
  x = torch.randn(x_shape).contiguous(memory_format=torch.channels_last).requires_grad_()
  w = torch.randn(w_shape).requires_grad_()

  def fwd():
    with torch.no_grad():
      torch.nn.functional.conv2d(x, w, stride=stride, padding=1, groups=groups)

  def grad():
    (torch.nn.functional.conv2d(x, w, stride=stride, padding=1, groups=groups) ** 2).sum().backward()
  return fwd, grad


def main():
  torch.set_num_threads(2)
  rng = np.random.default_rng(0)
  print('| op | shape | form | forward ms | forward + backward ms |\n|---|---|---|---|---|')
  for shape, stride in DEPTHWISE:
    x = jax.numpy.asarray(rng.standard_normal(shape), jax.numpy.float32)
    kernel = jax.numpy.asarray(rng.standard_normal((3, 3, 1, shape[-1])), jax.numpy.float32)
    for impl in ('native', 'shifted', 'grouped'):
      pair = jax_pair(lambda x, k, impl=impl: layers.depthwise_conv2d(x, k, stride, 1, impl), x, kernel)
      print(f'| depthwise 3x3 s{stride} | {shape} | affjax {impl} | {median_ms(pair[0]):.1f} | {median_ms(pair[1]):.1f} |')
    n, h, w, c = shape
    pair = torch_pair((n, c, h, w), (c, 1, 3, 3), stride, c)
    print(f'| depthwise 3x3 s{stride} | {shape} | PyTorch | {median_ms(pair[0]):.1f} | {median_ms(pair[1]):.1f} |')
  for n, h, w, c, f in DENSE:
    x = jax.numpy.asarray(rng.standard_normal((n, h, w, c)), jax.numpy.float32)
    kernel = jax.numpy.asarray(rng.standard_normal((3, 3, c, f)) * 0.05, jax.numpy.float32)
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    pair = jax_pair(conv, x, kernel)
    print(f'| dense 3x3 | {(n, h, w, c, f)} | XLA:CPU | {median_ms(pair[0]):.1f} | {median_ms(pair[1]):.1f} |')
    pair = torch_pair((n, c, h, w), (f, c, 3, 3), 1, 1)
    print(f'| dense 3x3 | {(n, h, w, c, f)} | PyTorch | {median_ms(pair[0]):.1f} | {median_ms(pair[1]):.1f} |')


if __name__ == '__main__':
  main()
