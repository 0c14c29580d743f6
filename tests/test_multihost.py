"""The README's multi-host launch, run for real: 2 processes x 2 CPU devices on 127.0.0.1 against 1 process x 4
devices on the same global batch, and a workdir that the processes do not share."""
import json
import os
import socket
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from affjax import workdir_lock
from test_train_loop import final_checkpoint, smoke_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def command(config, workdir) -> list[str]:
  overrides = dict(manual_dir=config.data.manual_dir, records_dir=config.data.records_dir,
                   test_list=config.data.test_list)
  train = dict(num_steps=config.train.num_steps, eval_every=config.train.eval_every,
               checkpoint_every=config.train.checkpoint_every, log_every=config.train.log_every)
  return ([sys.executable, '-m', 'affjax.main', '--config=configs/cross_attn.py:smoke,audio', f'--workdir={workdir}',
           f'--config.optim.eps={config.optim.eps}']
          + [f'--config.data.{k}={v}' for k, v in overrides.items()]
          + [f'--config.train.{k}={v}' for k, v in train.items()])


def launch(config, workdirs, devices_per_process: int) -> list[subprocess.CompletedProcess]:
  """The README's launch: the same command on every process with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID set (one process: none of them). Output goes to files: a full pipe would block a process and,
  through the collectives, the others."""
  port, n = free_port(), len(workdirs)
  procs = []
  for i, workdir in enumerate(workdirs):
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
    if n > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
    log = tempfile.TemporaryFile('w+')
    procs.append((subprocess.Popen(command(config, workdir), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   text=True), log))
  results = []
  for proc, log in procs:
    proc.wait(timeout=600)
    log.seek(0)
    results.append(subprocess.CompletedProcess(proc.args, proc.returncode, log.read()))
    log.close()
  return results


def test_two_processes_train_like_one(tiny_tree, tmp_path):
  """Same global batches (rows of process p = rows [pL, (p+1)L) of the single-process batch), the same
  augmentation and dropout (drawn per global example index and step): the runs differ only by the rounding of
  the cross-process reductions: measured at most 6e-8 on any parameter after 3 steps, and 5e-9 on the validation
  CCC, against 8e-6 on the parameters when each process drew its own rows and randomness. Adam with eps=1 keeps the
  update linear in the gradient: with the default eps, Adam's first steps map gradients near zero to +-lr by their
  sign and would turn that rounding into lr-sized differences."""
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(num_steps=3, eval_every=3, checkpoint_every=3, log_every=1)  # smoke: 2 warm-up steps
  config.optim.eps = 1.0
  single, = launch(config, [tmp_path / 'one'], devices_per_process=4)  # also builds the records
  assert single.returncode == 0, single.stdout[-3000:]
  pair = launch(config, [tmp_path / 'two'] * 2, devices_per_process=2)
  assert all(p.returncode == 0 for p in pair), pair[0].stdout[-3000:] + pair[1].stdout[-3000:]
  (step_1, state_1), (step_2, state_2) = (final_checkpoint(config, tmp_path / w) for w in ('one', 'two'))
  assert step_1 == step_2 == 3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-7), state_1.params, state_2.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-7),
               state_1.batch_stats, state_2.batch_stats)
  ccc_1, ccc_2 = (json.loads((tmp_path / w / 'eval' / 'summary.json').read_text())['validation']
                  for w in ('one', 'two'))
  assert ccc_1['num_frames'] == ccc_2['num_frames']
  assert ccc_1['ccc_mean'] == pytest.approx(ccc_2['ccc_mean'], abs=1e-6)


def test_workdir_not_shared_stops_every_process(tiny_tree, tmp_path):
  config = smoke_config(tiny_tree, tmp_path)
  pair = launch(config, [tmp_path / 'host0', tmp_path / 'host1'], devices_per_process=2)
  for p in pair:
    assert p.returncode != 0
    assert 'is not shared storage' in p.stdout, p.stdout[-3000:]
  assert not (tmp_path / 'host0' / workdir_lock.LOCK_FILE).exists()  # released on the way out
  assert not (tmp_path / 'host0' / 'checkpoints').exists()
