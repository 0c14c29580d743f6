"""Times MobileFaceNet's convolution implementations on the current JAX backend.

1. Depthwise conv, 'grouped' vs 'shifted' (affjax.models.layers.depthwise_conv2d): forward and weight
   gradient of a 3x3 stride-1 depthwise conv over [32, 56, 56, 128], and one MobileFaceNet train-mode
   forward+backward (gradient of all params, BN in train mode) on [16, 112, 112, 3] with each impl.
2. 1x1 conv (MobileFaceNet has 35), [16, 28, 28, 128] -> 256, as `lax.conv_general_dilated` vs the
   matmul of `layers.PointwiseConv`: forward and weight gradient.
Each case is jit-compiled, run once to warm up, then timed `--repeats` times; the median is reported.
The implementations of each pair are checked to agree first.

  PYTHONPATH=. python experiments/depthwise_conv_cpu.py [--repeats 5] [--out table.md]
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from affjax.models.backbones.mobilefacenet import MobileFaceNet
from affjax.models.layers import PointwiseConv, depthwise_conv2d

Case = tuple[str, dict[str, Callable], tuple]  # (name, {impl: jitted fn}, args)


def _median_seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _forward_and_weight_grad(label: str, impls: dict[str, Callable], x, k, ct) -> list[Case]:
  fwd = {name: jax.jit(f) for name, f in impls.items()}
  wgrad = {name: jax.jit(lambda x, k, ct, f=f: jax.vjp(lambda k: f(x, k), k)[1](ct)[0]) for name, f in impls.items()}
  return [(f'{label} forward', fwd, (x, k)), (f'{label} weight grad', wgrad, (x, k, ct))]


def depthwise_cases() -> list[Case]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((32, 56, 56, 128)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 1, 128)) / 3, jnp.float32)
  ct = jnp.asarray(rng.standard_normal((32, 56, 56, 128)), jnp.float32)
  impls = {impl: functools.partial(depthwise_conv2d, stride=1, padding=1, impl=impl) for impl in ('grouped', 'shifted')}
  return _forward_and_weight_grad('3x3 depthwise [32,56,56,128]', impls, x, k, ct)


def mobilefacenet_case() -> Case:
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(size=(16, 112, 112, 3)), jnp.float32)
  target = jnp.asarray(rng.standard_normal((16, 512)), jnp.float32)  # a random projection as the loss
  steps, variables = {}, None
  for impl in ('grouped', 'shifted'):
    model = MobileFaceNet(depthwise_impl=impl)
    variables = variables or jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)

    def loss(params, batch_stats, x, model=model):
      out, upd = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True, mutable=['batch_stats'])
      return jnp.vdot(out, target) / out.size, upd

    steps[impl] = jax.jit(jax.grad(loss, has_aux=True))
  return ('MobileFaceNet [16,112,112,3] train fwd+bwd', steps, (variables['params'], variables['batch_stats'], x))


def pointwise_cases() -> list[Case]:
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((16, 28, 28, 128)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 128, 256)) / 11, jnp.float32)
  ct = jnp.asarray(rng.standard_normal((16, 28, 28, 256)), jnp.float32)
  impls = {'lax.conv': lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'VALID',
                                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
           'matmul': lambda x, k: PointwiseConv(256).apply({'params': {'kernel': k}}, x)}
  return _forward_and_weight_grad('1x1 conv [16,28,28,128]->256', impls, x, k, ct)


def _max_relative_difference(fns: dict[str, Callable], args) -> float:
  """max over output leaves of ||a - b|| / ||a|| between the two implementations. Leaves with a norm
  below 1e-6 of the largest are skipped: structural zeros (e.g. the gradient of a BN bias followed by
  another BN, or a running mean after a bias-free conv of zero-mean input) are rounding noise."""
  a, b = (jax.tree.leaves(fn(*args)) for fn in fns.values())
  norms = [float(jnp.linalg.norm(x)) for x in a]
  return max(float(jnp.linalg.norm(x - y)) / n for x, y, n in zip(a, b, norms) if n > 1e-6 * max(norms))


def run_table(cases: list[Case], repeats: int) -> list[str]:
  impls = list(cases[0][1])
  lines = [f'| case | {impls[0]} (s) | {impls[1]} (s) | {impls[0]} / {impls[1]} | max rel. difference |',
           '|---|---|---|---|---|']
  for name, fns, args in cases:
    t = {impl: _median_seconds(fn, args, repeats) for impl, fn in fns.items()}
    diff = _max_relative_difference(fns, args)
    print(f'{name}: ' + ', '.join(f'{impl} {s:.4f} s' for impl, s in t.items()), flush=True)
    lines.append(f'| {name} | {t[impls[0]]:.3f} | {t[impls[1]]:.3f} | {t[impls[0]] / t[impls[1]]:.1f}x | {diff:.1e} |')
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--out', help='also write the markdown tables to this file')
  args = parser.parse_args()
  lines = [f'backend: {jax.default_backend()}, devices: {jax.devices()}, jax {jax.__version__}, '
           f'python {platform.python_version()}; median of {args.repeats} runs after one warm-up run', '',
           *run_table([*depthwise_cases(), mobilefacenet_case()], args.repeats), '',
           *run_table(pointwise_cases(), args.repeats)]
  table = '\n'.join(lines)
  print('\n' + table)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(table + '\n')


if __name__ == '__main__':
  main()
