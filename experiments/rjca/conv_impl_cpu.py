"""Forward and gradient time of the RJCA backbones with XLA's convolution vs `conv_taps` (resnet.CONV_IMPLS),
medians of 3 runs after one warm-up (compilation), and their largest relative output difference.

  PYTHONPATH=. python experiments/rjca/conv_impl_cpu.py
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from affjax import profiling
from affjax.models.backbones.resnet import R2Plus1D18, ResNet18

CASES = (('ResNet-18 audio, 16 x 64 x 224 log-mel', ResNet18, (16, 64, 224, 1)),
         ('ResNet-18 audio, 16 x 64 x 104 log-mel', ResNet18, (16, 64, 104, 1)),
         ('R(2+1)D-18, 16 clips 8 x 32 x 32', R2Plus1D18, (16, 8, 32, 32, 3)),
         ('R(2+1)D-18, 2 clips 8 x 112 x 112', R2Plus1D18, (2, 8, 112, 112, 3)))


def median_seconds(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  print(f'{jax.devices()[0].device_kind}, {profiling.cpu_description()}, float32')
  print('| network, input | xla forward s | taps forward s | xla gradient s | taps gradient s | max rel. diff |')
  print('|---|---|---|---|---|---|')
  for name, network, shape in CASES:
    x = jax.random.normal(jax.random.key(0), shape)
    row, outputs = {}, {}
    for impl in ('xla', 'taps'):
      model = network(conv_impl=impl)
      variables = model.init(jax.random.key(0), x, train=False)
      forward = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))
      grad = jax.jit(jax.grad(lambda v, x, m=model: m.apply(v, x, train=True, mutable=['batch_stats'])[0].sum()))
      outputs[impl] = forward(variables, x)
      row[impl] = (median_seconds(forward, variables, x), median_seconds(grad, variables, x))
    diff = float(jnp.abs(outputs['xla'] - outputs['taps']).max() / jnp.abs(outputs['xla']).max())
    print(f"| {name} | {row['xla'][0]:.3f} | {row['taps'][0]:.3f} | {row['xla'][1]:.3f} | {row['taps'][1]:.3f} | "
          f'{diff:.1e} |', flush=True)


if __name__ == '__main__':
  main()
