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
from configs import lfan
from test_lfan_train import saved_recipe
from test_multihost import ROOT, command
from test_nonfinite import saved_steps
from test_train_loop import final_checkpoint, smoke_config


def run_args(flags: list[str], kill_at=None) -> subprocess.CompletedProcess:
  """`python -m affjax.main FLAGS`, or through tests/sigkill_run.py killed at `kill_at`."""
  launcher = [os.path.join(ROOT, 'tests', 'sigkill_run.py'), kill_at] if kill_at else ['-m', 'affjax.main']
  return subprocess.run([sys.executable, *launcher, *flags], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                        capture_output=True, text=True, timeout=600)


def run(config, workdir, kill_at=None) -> subprocess.CompletedProcess:
  return run_args(command(config, workdir)[3:], kill_at)


def test_sigkill_while_checkpointing_and_while_evaluating_then_resume_equals_uninterrupted(tiny_tree, tmp_path):
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(num_steps=6, checkpoint_every=2, eval_every=4, log_every=1)
  straight = run(config, tmp_path / 'straight')
  assert straight.returncode == 0, straight.stderr[-3000:]
  killed = tmp_path / 'killed'

  first = run(config, killed, kill_at='checkpoint:4')
  assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
  assert saved_steps(killed) == [2]  # the write of step 4 never committed
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
  records = [json.loads((w / 'checkpoints' / checkpoint.RECORD_FILE).read_text())
             for w in (tmp_path / 'straight', killed)]
  assert records[0]['metrics'] == records[1]['metrics'] and set(records[0]['metrics']) == {'4', '6'}
  rows = [json.loads(line) for line in (killed / 'scalars.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2, 3, 4, 5, 6]  # one row per step
  assert [r['step'] for r in rows if 'validation/ccc_mean' in r] == [4, 6]


def test_epoch_recipe_killed_right_after_an_epochs_checkpoint_resumes_equal_to_uninterrupted(tiny_tree, tmp_path):
  """LFAN's recipe state and best weights are items of the epoch's checkpoint: a kill right after its commit
  (formerly before recipe.json and best_variables.msgpack were written) neither replays the epoch nor re-saves
  its step."""
  config = lfan.get_config('smoke,visual')
  config.data.manual_dir, config.data.records_dir = str(tiny_tree), str(tmp_path / 'records')
  config.train.num_epochs = 2
  args = lambda workdir: ['--config=configs/lfan.py:smoke,visual', f'--workdir={workdir}',
                          '--config.train.num_epochs=2', f'--config.data.manual_dir={tiny_tree}',
                          f'--config.data.records_dir={tmp_path / "records"}']
  straight = run_args(args(tmp_path / 'straight'))
  assert straight.returncode == 0, straight.stderr[-3000:]
  first_epoch = min(int(s) for s in json.loads(
      (tmp_path / 'straight' / 'checkpoints' / checkpoint.RECORD_FILE).read_text())['metrics'])
  killed = run_args(args(tmp_path / 'killed'), kill_at=f'committed:{first_epoch}')
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert saved_steps(tmp_path / 'killed') == [first_epoch]
  resumed = run_args(args(tmp_path / 'killed'))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed after epoch 1' in resumed.stderr
  assert saved_recipe(tmp_path / 'killed') == saved_recipe(tmp_path / 'straight')
  (step_a, a), (step_b, b) = (final_checkpoint(config, tmp_path / w) for w in ('straight', 'killed'))
  assert step_a == step_b == 2 * first_epoch
  jax.tree.map(np.testing.assert_array_equal, a, b)
