"""Throughput of the train step and of the input pipeline (frames/s), medians after warm-up.

  python tools/bench_throughput.py --config=configs/cross_attn.py [--steps=10] [--config.train.batch_size=8]

The train step runs on fixed batches already on device (compute only); the pipeline is timed alone, batch
by batch, with the config's worker processes. Prints one markdown table row per measurement.
"""
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps / batches (after warm-up).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps / batches first.')


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from affjax import config_validation, follower_features, models, parallel, profiling  # pylint: disable=g-import-not-at-top
  from affjax.data import pipeline, prepare  # pylint: disable=g-import-not-at-top
  from affjax.train import optim, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  config_validation.validate(config)
  with tempfile.TemporaryDirectory() as workdir:  # LFAN: follower features and statistics, as a run prepares them
    config = follower_features.prepare(config, prepare.input_dir(config), workdir)
  records = pipeline.open_partition(prepare.input_dir(config), 'train', config)
  frames_per_batch = config.train.batch_size * config.data.window
  device = f'{jax.devices()[0].device_kind} x{jax.device_count()} ({profiling.cpu_description()})'

  def median_rate(times):
    return frames_per_batch / float(np.median(times))

  it = iter(pipeline.train_dataset(records, config))
  times = []
  for i in range(_WARMUP.value + _STEPS.value):
    t = time.perf_counter()
    batch = next(it)
    if i >= _WARMUP.value:
      times.append(time.perf_counter() - t)
  if hasattr(it, 'close'):  # stops the grain worker processes
    it.close()
  print(f'| input pipeline | {device} | {config.data.num_workers} workers | batch {config.train.batch_size}x'
        f'{config.data.window} | {median_rate(times):.1f} frames/s |')

  mesh = parallel.make_mesh()
  model = models.build_model(config.model)
  tx = optim.make_optimizer(config, models.param_labels(config.model))
  state = state_lib.initial_state(model, tx, config, mesh, seed=0)
  with jax.set_mesh(mesh):
    acc = jax.device_put(step_lib.zero_accumulator(), parallel.replicated(mesh))
    train_step = step_lib.make_train_step(model, tx, config)
    global_batch = parallel.to_global(batch, mesh)
    times = []
    for i in range(_WARMUP.value + _STEPS.value):
      t = time.perf_counter()
      state, acc = train_step(state, acc, global_batch)
      jax.block_until_ready(acc)
      if i >= _WARMUP.value:
        times.append(time.perf_counter() - t)
  parts = config.model.get('modalities', ('visual', *config.model.get('followers', ())))  # LFAN: leader, followers
  print(f'| train step ({config.model.name}, {"+".join(parts)}, {config.train.dtype}) | {device} '
        f'| - | batch {config.train.batch_size}x{config.data.window} | {median_rate(times):.1f} frames/s '
        f'({float(np.median(times)):.2f} s/step) |')


if __name__ == '__main__':
  app.run(main)
