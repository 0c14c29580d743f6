"""Validation CCC of RJCA for K joint co-attention iterations on the synthetic tree, one run per K.

  PYTHONPATH=. python tools/rjca_k_sweep.py --variant=smoke --num_steps=20 --out=experiments/rjca/k_sweep_cpu.md

Each run trains `num_steps` steps of configs/rjca.py:<variant> with model.num_iterations = K (same seed, data
and backbones), then scores the best checkpoint on the validation split; the table is written as Markdown.
"""
from __future__ import annotations

import pathlib
import tempfile
import time

import jax
from absl import app, flags

from affjax.train import loop
from configs import rjca

_VARIANT = flags.DEFINE_string('variant', 'smoke', 'configs/rjca.py variant the runs start from.')
_NUM_STEPS = flags.DEFINE_integer('num_steps', 20, 'Training steps per run.')
_ITERATIONS = flags.DEFINE_list('iterations', ['1', '2', '3'], 'Values of K.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Where the runs go (default: a temporary directory).')
_OUT = flags.DEFINE_string('out', 'experiments/rjca/k_sweep_cpu.md', 'Markdown table to write.')


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix='rjca-k-sweep-'))
  rows = []
  for k in map(int, _ITERATIONS.value):
    config = rjca.get_config(_VARIANT.value)
    steps = _NUM_STEPS.value
    config.model.num_iterations = k
    config.train.update(num_steps=steps, eval_every=steps, checkpoint_every=steps, log_every=min(10, steps))
    start = time.perf_counter()
    metrics = loop.train_and_evaluate(config, workdir / f'k{k}')['validation']
    rows.append((k, metrics, time.perf_counter() - start))
    print(k, metrics, flush=True)
  lines = [f'# RJCA: validation CCC vs K joint co-attention iterations ({jax.devices()[0].device_kind}, '
           f'configs/rjca.py:{_VARIANT.value}, {_NUM_STEPS.value} steps)', '',
           f'Rerun: `PYTHONPATH=. python tools/rjca_k_sweep.py --variant={_VARIANT.value} '
           f'--num_steps={_NUM_STEPS.value}`', '',
           '| K | CCC valence | CCC arousal | CCC mean | validation frames | wall s (compile + train + eval) |',
           '|---|---|---|---|---|---|']
  lines += [f"| {k} | {m['ccc_valence']:.4f} | {m['ccc_arousal']:.4f} | {m['ccc_mean']:.4f} | {m['num_frames']} | "
            f'{seconds:.0f} |' for k, m, seconds in rows]
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text('\n'.join(lines) + '\n')
  print(out.read_text())


if __name__ == '__main__':
  app.run(main)
