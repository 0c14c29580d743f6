"""LFAN train-step throughput (frames/s): affjax's jitted step next to the same model in PyTorch (tools/torch_lfan.py),
on the same CPU and the same batch, measured in alternating rounds so that both see the same machine load.

  PYTHONPATH=. python tools/bench_lfan.py --config=configs/lfan.py [--rounds=3] [--steps=3]
      [--config.model.ir50_units="(3,4,14,3)"] [--config.train.batch_size=2]

Both steps: IR-50 on 40 x 40 crops with the config's released groups (frozen ones on BatchNorm running averages,
no gradients), the three causal TCNs, MFCC from the window's audio, VGGish embeddings as input, the
leader-follower fusion, 1 - per-window CCC, Adam with coupled weight decay. Prints one markdown row: the medians
of every timed step after one warm-up step per framework.
"""
from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/lfan.py', 'An LFAN config.', lock_config=True)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds (JAX steps, then PyTorch steps).')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per framework and round.')


def jax_step(config, batch):
  """() -> runs one affjax train step on `batch` (already on device) and waits for it."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from affjax import models, parallel  # pylint: disable=g-import-not-at-top
  from affjax.train import optim, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  model = models.build_model(config.model, config.compat)
  tx = optim.make_optimizer(config, models.param_labels(config.model))
  mesh = parallel.make_mesh()
  with jax.set_mesh(mesh):
    device_batch = parallel.to_global(batch, mesh)
    init_batch = {k: v[:1] for k, v in device_batch.items()}
    variables = jax.jit(lambda r: model.init({'params': r, 'dropout': r}, init_batch, train=False))(jax.random.key(0))
    holder = {'state': state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                                            batch_stats=variables['batch_stats'],
                                            opt_state=jax.jit(tx.init)(variables['params']), rng=jax.random.key(1)),
              'acc': step_lib.zero_accumulator()}
    train_step = step_lib.make_train_step(model, tx, config)

  def run():
    with jax.set_mesh(mesh):
      holder['state'], holder['acc'] = train_step(holder['state'], holder['acc'], device_batch)
      jax.block_until_ready(holder['acc'])

  return run


def torch_step(config, batch):
  """() -> runs one PyTorch train step of the same model on `batch`."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch_lfan  # pylint: disable=g-import-not-at-top
  m = config.model
  model = torch_lfan.LFAN(tuple(m.ir50_units), config.data.crop_size, m.released, tuple(m.visual_channels),
                          tuple(m.follower_channels), m.kernel_size, m.tcn_dropout, m.fusion_dim)
  optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.optim.learning_rate,
                               weight_decay=config.optim.weight_decay)  # coupled L2, as affjax's lfan optimiser
  tensors = {k: torch.from_numpy(v.astype('int64') if k == 'audio_offsets' else v) for k, v in batch.items()}
  return lambda: torch_lfan.train_step(model, optimizer, tensors)


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch_lfan  # pylint: disable=g-import-not-at-top
  from affjax import profiling  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value.copy_and_resolve_references()
  config.model.feature_norm.update(vggish=(0.0, 1.0), mfcc=(0.0, 1.0))  # statistics do not change the cost
  batch = torch_lfan.random_batch(config)
  steps = {'jax': jax_step(config, batch), 'torch': torch_step(config, batch)}
  times = {name: [] for name in steps}
  for name, run in steps.items():  # warm-up (compilation, allocator)
    run()
  for _ in range(_ROUNDS.value):
    for name, run in steps.items():
      for _ in range(_STEPS.value):
        t = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - t)
  frames = config.train.batch_size * config.data.window
  rate = {name: frames / float(np.median(t)) for name, t in times.items()}
  m = config.model
  print('| IR-50 units | released | batch | affjax (JAX) frames/s | PyTorch frames/s | JAX / PyTorch | device |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  print(f'| {tuple(m.ir50_units)} | {m.released} | {config.train.batch_size}x{config.data.window} | {rate["jax"]:.1f} '
        f'| {rate["torch"]:.1f} | {rate["jax"] / rate["torch"]:.2f} | {profiling.cpu_description()}, '
        f'torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} cores |')


if __name__ == '__main__':
  app.run(main)
