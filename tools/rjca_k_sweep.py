"""Validation CCC of RJCA for K joint co-attention iterations and several seeds, one run per (K, seed).

  PYTHONPATH=. python tools/rjca_k_sweep.py --features_dir=DIR --num_steps=600 --seeds=0,1,2 \
      --out=experiments/rjca/k_sweep_cpu.md

Each run trains `num_steps` steps of configs/rjca.py:<variant> with model.num_iterations = K and config.seed =
the seed (fusion initialisation, dropout, shuffling), validating every `eval_every` steps, then scores the best
checkpoint on the validation split. With `--features_dir` (a feature cache of frozen backbones,
tools/cache_features.py) the runs train the fusion alone from it, which makes several seeds per K affordable.
The table (mean and standard deviation over seeds, and every run) is written as Markdown.
"""
from __future__ import annotations

import pathlib
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from affjax import profiling
from affjax.train import loop
from configs import rjca

_VARIANT = flags.DEFINE_string('variant', 'frozen', 'configs/rjca.py variant the runs start from.')
_FEATURES_DIR = flags.DEFINE_string('features_dir', '', 'Feature cache to train from (empty: backbones inline).')
_NUM_STEPS = flags.DEFINE_integer('num_steps', 600, 'Training steps per run.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 200, 'Validation every this many steps (best checkpoint kept).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 0, 'Windows per batch (0: the config\'s).')
_ITERATIONS = flags.DEFINE_list('iterations', ['1', '2', '3'], 'Values of K.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds per K.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Where the runs go (default: a temporary directory).')
_OUT = flags.DEFINE_string('out', 'experiments/rjca/k_sweep_cpu.md', 'Markdown table to write.')


def run_config(k: int, seed: int):
  config = rjca.get_config(_VARIANT.value)
  config.model.num_iterations, config.seed = k, seed
  config.data.features_dir = _FEATURES_DIR.value
  if _BATCH_SIZE.value:  # the epoch-step schedule keeps counting epochs of the same windows
    config.optim.steps_per_epoch = config.optim.steps_per_epoch * config.train.batch_size // _BATCH_SIZE.value
    config.train.batch_size = _BATCH_SIZE.value
  steps = _NUM_STEPS.value
  config.train.update(num_steps=steps, eval_every=min(_EVAL_EVERY.value, steps), checkpoint_every=steps,
                      log_every=min(50, steps))
  return config


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix='rjca-k-sweep-'))
  runs = {}
  for k in map(int, _ITERATIONS.value):
    for seed in map(int, _SEEDS.value):
      start = time.perf_counter()
      metrics = loop.train_and_evaluate(run_config(k, seed), workdir / f'k{k}_seed{seed}')['validation']
      runs[k, seed] = (metrics, time.perf_counter() - start)
      print(k, seed, metrics, flush=True)
  config = run_config(1, 0)
  config_name = 'configs/rjca.py' + (f':{_VARIANT.value}' if _VARIANT.value else '')
  source = f'feature cache `{_FEATURES_DIR.value}`' if _FEATURES_DIR.value else 'backbones inline'
  lines = [f'# RJCA: validation CCC vs K joint co-attention iterations ({jax.devices()[0].device_kind}, '
           f'{profiling.cpu_description()})', '',
           f'{config_name}, {source}, {_NUM_STEPS.value} steps of batch {config.train.batch_size}'
           f' x {config.data.num_clips} clips per run, validation every {config.train.eval_every} steps, best '
           f'checkpoint scored; seeds {", ".join(_SEEDS.value)}.', '',
           '| K | CCC valence | CCC arousal | CCC mean | runs |', '|---|---|---|---|---|']
  for k in map(int, _ITERATIONS.value):
    values = {key: np.array([runs[k, int(s)][0][key] for s in _SEEDS.value])
              for key in ('ccc_valence', 'ccc_arousal', 'ccc_mean')}
    lines.append(f'| {k} | ' + ' | '.join(f'{v.mean():.4f} +- {v.std():.4f}' for v in values.values()) +
                 f' | {len(_SEEDS.value)} |')
  lines += ['', '| K | seed | CCC valence | CCC arousal | CCC mean | validation frames | wall s |',
            '|---|---|---|---|---|---|---|']
  lines += [f"| {k} | {seed} | {m['ccc_valence']:.4f} | {m['ccc_arousal']:.4f} | {m['ccc_mean']:.4f} | "
            f"{m['num_frames']} | {seconds:.0f} |" for (k, seed), (m, seconds) in runs.items()]
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text('\n'.join(lines) + '\n')
  print(out.read_text())


if __name__ == '__main__':
  app.run(main)
