"""Throughput of the train step and of the input pipeline (frames/s, or clips/s for the clip view), after warm-up.

  python tools/bench_throughput.py --config=configs/cross_attn.py [--steps=10] [--config.train.batch_size=8]
  python tools/bench_throughput.py --config=configs/rjca.py:frozen --features_dir=DIR  # inline frozen vs DIR's cache
  python tools/bench_throughput.py --upstream_dir=/work/upstream [--cases=cross_attn,cross_attn_frozen]  # vs PyTorch

The train step runs on fixed batches already on device (compute only), median of `--steps` after warm-up; the
pipeline is timed alone, with the config's worker processes, as its steady rate: batches read as fast as they
come, over the second half of `--pipeline_batches` (the first half drains what the workers had prefetched).
Prints one markdown table row per measurement; with `--features_dir` (a feature cache of the config's
backbones, `tools/cache_features.py`) it measures the config as given, then the same config reading the cache,
in the same process, and their ratios. With `--upstream_dir` (checkouts of the upstream repositories) it times
affjax against the upstream PyTorch models instead, alternating in two processes (tools/vs_upstream.py).
"""
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps / batches (after warm-up).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps / batches first.')
_PIPELINE_BATCHES = flags.DEFINE_integer('pipeline_batches', 40, 'Batches the pipeline is timed over (after warm-up).')
_FEATURES_DIR = flags.DEFINE_string('features_dir', '', 'Also measure the config reading this feature cache.')
_UPSTREAM_DIR = flags.DEFINE_string('upstream_dir', '', 'Checkouts of the upstream repositories: time affjax '
                                    'against them (tools/vs_upstream.py) instead of --config.')
_CASES = flags.DEFINE_list('cases', ['cross_attn', 'cross_attn_frozen', 'cross_attn_infer'],
                           'With --upstream_dir: the rows (tools/vs_upstream.CASES).')
_ROUNDS = flags.DEFINE_integer('rounds', 8, 'With --upstream_dir: alternating A, B rounds per row.')
_THREADS = flags.DEFINE_integer('threads', 0, 'With --upstream_dir: PyTorch threads (0 = the CPU count).')
_BASELINE_DIR = flags.DEFINE_string('baseline_dir', '', 'With --upstream_dir: time this affjax tree (e.g. '
                                    '`git archive main`) in place of upstream, for before/after ratios.')
_DTYPE = flags.DEFINE_enum('dtype', '', ['', 'float32', 'bfloat16'], 'With --upstream_dir: affjax train.dtype '
                           '(upstream: bfloat16 autocast); empty = the config\'s.')
_ATTENTION_IMPL = flags.DEFINE_enum('attention_impl', '', ['', 'xla', 'cudnn'], 'With --upstream_dir: affjax '
                                    'model.attention_impl of the attention fusions; empty = the config\'s.')
_UPSTREAM_COMMITS = flags.DEFINE_list('upstream_commits', [], 'With --upstream_dir: repo=commit pairs for '
                                      'checkouts without .git (exported trees).')


def measure(config, label: str) -> tuple[float, float]:
  """Prints the pipeline and train-step rows of `config`; returns their rates (units per second)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from affjax import config_validation, follower_features, models, parallel, profiling  # pylint: disable=g-import-not-at-top
  from affjax.data import pipeline, prepare, records as records_lib  # pylint: disable=g-import-not-at-top
  from affjax.train import optim, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top

  config_validation.validate(config)
  with tempfile.TemporaryDirectory() as workdir:  # LFAN: follower features and statistics, as a run prepares them
    config = follower_features.prepare(config, prepare.input_dir(config), workdir)
  records = records_lib.open_partition(prepare.input_dir(config), 'train', config)
  clip_view = config.data.get('view', 'frames') == 'clips'
  unit = 'clips' if clip_view else 'frames'
  per_window = config.data.num_clips if clip_view else config.data.window
  device = f'{jax.devices()[0].device_kind} x{jax.device_count()} ({profiling.cpu_description()})'
  shape = f'batch {config.train.batch_size}x{per_window} {unit}'

  def timed(fn):
    times = []
    for i in range(_WARMUP.value + _STEPS.value):
      t = time.perf_counter()
      fn()
      if i >= _WARMUP.value:
        times.append(time.perf_counter() - t)
    return float(np.median(times))

  it = iter(pipeline.train_dataset(records, config))
  for _ in range(_WARMUP.value):  # worker start-up
    batch = next(it)
  times = []
  for _ in range(_PIPELINE_BATCHES.value):  # as fast as the workers deliver
    batch = next(it)
    times.append(time.perf_counter())
  if hasattr(it, 'close'):  # stops the grain worker processes
    it.close()
  half = len(times) // 2  # the first half drains what the workers had prefetched
  pipeline_rate = config.train.batch_size * per_window * (len(times) - 1 - half) / (times[-1] - times[half])
  print(f'| input pipeline ({label}) | {device} | {config.data.num_workers} workers | {shape} | '
        f'{pipeline_rate:.1f} {unit}/s |', flush=True)

  mesh = parallel.make_mesh()
  model = models.build_model(config.model, config.compat)
  tx = optim.make_optimizer(config, models.param_labels(config.model))
  state = state_lib.initial_state(model, tx, config, mesh, seed=0)
  with jax.set_mesh(mesh):
    acc = jax.device_put(step_lib.zero_accumulator(), parallel.replicated(mesh))
    train_step = step_lib.make_train_step(model, tx, config)
    global_batch = parallel.to_global(batch, mesh)
    carry = [state, acc]

    def step():
      carry[:] = train_step(*carry, global_batch)
      jax.block_until_ready(carry[1])

    seconds = timed(step)
  step_rate = config.train.batch_size * per_window / seconds
  parts = config.model.get('modalities', ('visual', *config.model.get('followers', ())))  # LFAN: leader, followers
  print(f'| train step ({label}; {config.model.name}, {"+".join(parts)}, {config.train.dtype}) | '
        f'{device} | - | {shape} | {step_rate:.1f} {unit}/s ({seconds:.3f} s/step) |', flush=True)
  return pipeline_rate, step_rate


def main(argv):
  del argv
  if _UPSTREAM_DIR.value:
    import os  # pylint: disable=g-import-not-at-top
    import vs_upstream  # pylint: disable=g-import-not-at-top  (tools/, next to this file)
    commits = dict(pair.split('=', 1) for pair in _UPSTREAM_COMMITS.value)
    vs_upstream.main_upstream(_UPSTREAM_DIR.value, _CASES.value, _ROUNDS.value, _THREADS.value or os.cpu_count(),
                              commits, _BASELINE_DIR.value,
                              {k: v for k, v in (('dtype', _DTYPE.value), ('attention_impl', _ATTENTION_IMPL.value)) if v})
    return
  if _CONFIG.value is None:
    raise app.UsageError('--config is required (or --upstream_dir)')
  if _PIPELINE_BATCHES.value < 4:
    raise app.UsageError(f'--pipeline_batches={_PIPELINE_BATCHES.value}: needs at least 4 (the rate is taken over '
                         'the second half)')
  config = _CONFIG.value
  inline = measure(config, 'inline' if _FEATURES_DIR.value else 'as configured')
  if _FEATURES_DIR.value:
    config.data.features_dir = _FEATURES_DIR.value
    cached = measure(config, 'feature cache')
    print(f'feature cache / inline: input pipeline {cached[0] / inline[0]:.1f}x, '
          f'train step {cached[1] / inline[1]:.1f}x')


if __name__ == '__main__':
  app.run(main)
