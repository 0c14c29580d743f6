"""Real kills: SIGKILL a training process while an asynchronous checkpoint is being written, then during an
evaluation, resume each time with the same command, and compare with an uninterrupted run bit for bit."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np

from affjax import checkpoint
from test_multihost import ROOT, command
from test_train_loop import final_checkpoint, smoke_config


def run(config, workdir, kill_at=None) -> subprocess.CompletedProcess:
  args = command(config, workdir)
  if kill_at:
    args = [sys.executable, os.path.join(ROOT, 'tests', 'sigkill_run.py'), kill_at] + args[3:]
  return subprocess.run(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                        timeout=600)


def steps_of(workdir) -> list[int]:
  saved = checkpoint.Checkpointer(workdir)
  try:
    return saved.all_steps()
  finally:
    saved.close()


def test_sigkill_while_checkpointing_and_while_evaluating_then_resume_equals_uninterrupted(tiny_tree, tmp_path):
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(num_steps=6, checkpoint_every=2, eval_every=4, log_every=1)
  straight = run(config, tmp_path / 'straight')
  assert straight.returncode == 0, straight.stderr[-3000:]
  killed = tmp_path / 'killed'

  first = run(config, killed, kill_at='checkpoint:4')
  assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
  assert steps_of(killed) == [2]  # the write of step 4 never committed
  assert list((killed / 'checkpoints').glob('4.orbax-checkpoint-tmp*'))  # it was under way

  second = run(config, killed, kill_at='evaluation')  # resumes from 2; killed evaluating step 4
  assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
  saved = checkpoint.Checkpointer(killed)
  assert saved.all_steps() == [2, 4] and saved.metrics(4) is None  # saved before its evaluation: nothing lost
  saved.close()

  third = run(config, killed)  # evaluates step 4 first, then trains to 6
  assert third.returncode == 0, third.stderr[-3000:]
  (step_a, a), (step_b, b) = final_checkpoint(config, tmp_path / 'straight'), final_checkpoint(config, killed)
  assert step_a == step_b == 6
  jax.tree.map(np.testing.assert_array_equal, a, b)  # every parameter, optimizer slot, statistic and the RNG
  records = [json.loads((w / 'checkpoints' / checkpoint.RECORD_FILE).read_text()) for w in (tmp_path / 'straight', killed)]
  assert records[0]['metrics'] == records[1]['metrics'] and set(records[0]['metrics']) == {'4', '6'}
  rows = [json.loads(line) for line in (killed / 'scalars.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2, 3, 4, 5, 6]  # one row per step
  assert [r['step'] for r in rows if 'validation/ccc_mean' in r] == [4, 6]
