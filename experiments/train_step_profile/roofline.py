"""The roofline of one compiled train step on this CPU: how long the step would take at the CPU's measured float32
matmul peak (its FLOPs over the peak: a lower bound, since no instruction computes faster than a large matmul),
against the time the step takes, for affjax and for the upstream PyTorch code of the same row.

  PYTHONPATH=. python experiments/train_step_profile/roofline.py --system=lstm --set=train.batch_size=4 \\
      --set=data.window=8 [--benchmark_json=/tmp/idle/karas_train.json]

The step is the one `tools/benchmark.py` times (profile_step.build_step: same config, batch and random inputs).
Measured here, in this process, with XLA's threads (one per core):
  matmul peak   a float32 n x n matmul (`--matmul_size`), 2 n^3 FLOPs, the best of `--repeats` calls
  bandwidth     `y = 2 x` over a float32 array of `--stream_mib` MiB (reads x, writes y), the best of `--repeats`
  FLOPs, bytes  `compiled.cost_analysis()` of the compiled step: XLA's count of the FLOPs and of the bytes its
                instructions read and write (every operand and output once per instruction, caches ignored: an
                over-count of the memory traffic, so bytes / bandwidth is printed for information, not as a bound)
  step          median wall time of `--steps` steps after two warm-up steps (on a loaded machine: use the
                benchmark's figures)
The upstream side's time (and affjax's from the same run) come from a `tools/benchmark.py --json` file, the row of
the same system and settings; the upstream step does the same arithmetic (the models match layer for layer, the
parameter counts to < 0.1 %: experiments/vs_upstream_cpu.md), so its lower bound is the same. Prints the machine
figures, a cross-check of XLA's FLOP count against one layer counted by hand, and a markdown table row.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / 'tools'))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import profile_step  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# --system, --set, --steps: profile_step's flags
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 2048, 'n of the n x n float32 matmul that measures the peak.')
_STREAM_MIB = flags.DEFINE_integer('stream_mib', 512, 'Size of the array that measures the memory bandwidth.')
_REPEATS = flags.DEFINE_integer('repeats', 9, 'Calls of the peak and bandwidth measurements (the best counts).')
_BENCHMARK_JSON = flags.DEFINE_multi_string('benchmark_json', [], 'tools/benchmark.py --json outputs to take the '
                                            'upstream (and affjax) s/step of the same row from.')
_HEADER = flags.DEFINE_bool('header', True, 'Print the table header and the machine figures.')


def best_call_seconds(fn, repeats: int) -> float:
  """The shortest of `repeats` calls after a warm-up call: a peak is what the CPU does when nothing else runs."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def matmul_peak(n: int, repeats: int) -> float:
  """FLOP/s of a float32 n x n x n matmul (2 n^3 FLOPs) on the default device, the best of `repeats` calls."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.float32) for i in range(2))
  matmul = jax.jit(jnp.matmul)
  return 2 * n**3 / best_call_seconds(lambda: matmul(a, b).block_until_ready(), repeats)


def stream_bandwidth(mib: int, repeats: int) -> float:
  """Bytes/s of `y = 2 x` over a float32 array of `mib` MiB (it reads x and writes y: 2 x its size), the best of
  `repeats` calls."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
  scale = jax.jit(lambda x: 2.0 * x)
  return 2 * x.nbytes / best_call_seconds(lambda: scale(x).block_until_ready(), repeats)


def cost(compiled) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of a compiled computation, from XLA's cost analysis."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0]
  return float(analysis['flops']), float(analysis['bytes accessed'])


def layer_check() -> str:
  """XLA's FLOP count of one layer's train gradient against the count by hand: MobileFaceNet's first conv (3 x 3,
  stride 2, 3 -> 64 channels) over 32 faces of 112 px, forward and both gradients = 3 x 2 N Ho Wo K K Cin Cout."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from affjax.models import layers  # pylint: disable=g-import-not-at-top
  n, size, k, c_in, c_out, stride = 32, 112, 3, 3, 64, 2
  x, w = jnp.ones((n, size, size, c_in)), jnp.ones((k, k, c_in, c_out))
  dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))
  loss = lambda x, w: jnp.sum(layers.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                                          dimension_numbers=dims) ** 2)
  flops, _ = cost(jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile())
  out = size // stride
  by_hand = 3 * 2 * n * out * out * k * k * c_in * c_out
  return (f'cross-check, MobileFaceNet conv1 train gradient (32 x 112 x 112 x 3 -> 64, 3 x 3, stride 2): XLA '
          f'{flops / 1e9:.3f} GFLOP, by hand 3 x 2 N Ho Wo K^2 Cin Cout = {by_hand / 1e9:.3f} GFLOP')


def benchmark_row(paths: list[str], system: str, settings: list[str]) -> dict | None:
  """The train row of `system` with `settings` in the first of the tools/benchmark.py JSON files that has one."""
  for path in paths:
    result = json.loads(pathlib.Path(path).read_text())
    for row in result['rows']:
      if row['system'] == system and row['mode'] == 'train' and result['settings'] == list(settings):
        return row
  return None


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  from affjax import profiling  # pylint: disable=g-import-not-at-top
  _, _, step, compiled = profile_step.build_step(profile_step.SYSTEM.value, profile_step.SET.value)
  peak = matmul_peak(_MATMUL_SIZE.value, _REPEATS.value)
  bandwidth = stream_bandwidth(_STREAM_MIB.value, _REPEATS.value)
  flops, nbytes = cost(compiled)
  seconds = profile_step.median_seconds(step, profile_step.STEPS.value)
  row = benchmark_row(_BENCHMARK_JSON.value, profile_step.SYSTEM.value, profile_step.SET.value)
  sides = row['sides'] if row else {}
  upstream = sides.get('upstream', {}).get('median_s')
  benchmarked = sides.get('affjax', {}).get('median_s')
  bound, mine = flops / peak, seconds if benchmarked is None else benchmarked  # the benchmark's when given
  fmt = lambda s: '-' if s is None else f'{s:.3f}'
  share = lambda s: '-' if s is None else f'{flops / s / peak:.0%}'
  if _HEADER.value:
    print(f'{jax.devices()[0].device_kind} ({profiling.cpu_description()}), {jax.device_count()} device, jax '
          f'{jax.__version__}: float32 matmul peak {peak / 1e9:.1f} GFLOP/s (n = {_MATMUL_SIZE.value}), memory '
          f'bandwidth {bandwidth / 1e9:.1f} GB/s ({_STREAM_MIB.value} MiB scaled)')
    print(layer_check() + '\n')
    print('| system (settings) | GFLOP per step | XLA GB accessed per step | at peak s (bound) | GB / bandwidth s | affjax s (here) '
          '| affjax s (benchmark) | upstream s (benchmark) | affjax / bound | upstream / bound | affjax FLOP/s of peak '
          '| upstream FLOP/s of peak |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
  settings = ' '.join(s.split('.', 1)[-1] for s in profile_step.SET.value)
  print(f'| {profile_step.SYSTEM.value} ({settings}) | {flops / 1e9:.1f} | {nbytes / 1e9:.2f} | {flops / peak:.3f} | '
        f'{nbytes / bandwidth:.3f} | {seconds:.3f} | {fmt(benchmarked)} | {fmt(upstream)} | {mine / bound:.1f} | '
        f'{"-" if upstream is None else f"{upstream / bound:.1f}"} | {share(mine)} | {share(upstream)} |',
        flush=True)


if __name__ == '__main__':
  app.run(main)
