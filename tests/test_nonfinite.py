"""Divergence: only states whose next steps trained on finite values count as good; the newest good checkpoint is
never deleted; a stopped run names it (or says there is none); `train.on_nonfinite='rollback'` goes on."""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax import checkpoint
from affjax.train import loop, step as step_lib
from test_train_loop import final_checkpoint, smoke_config


def poison(monkeypatch, calls):
  """The train step sees NaN labels at the given call numbers (1-based, counted over the whole test)."""
  real, count = step_lib.make_train_step, [0]

  def make(*args, **kwargs):
    train_step = real(*args, **kwargs)

    def wrapped(state, acc, batch):
      count[0] += 1
      if count[0] in calls:
        with jax.transfer_guard('allow'):
          batch = dict(batch, labels=batch['labels'] * jnp.nan)
      return train_step(state, acc, batch)
    return wrapped

  monkeypatch.setattr(step_lib, 'make_train_step', make)


def saved_steps(workdir):
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def test_diverging_run_keeps_the_last_good_checkpoint_and_a_rerun_finishes(tiny_tree, tmp_path):
  """The issue's case: a good run continued at learning rate 1e6 with a checkpoint every step and
  keep_checkpoints=1. The step after the first 1e6 update leaves finite but huge parameters (~6e5), and the loss
  of the next step is non-finite: that saved state is not good, the one before it is."""
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(num_steps=3, checkpoint_every=1, eval_every=100, log_every=1, keep_checkpoints=1)
  loop.train_and_evaluate(config, tmp_path / 'run')
  diverging = config.copy_and_resolve_references()
  diverging.train.num_steps = 8
  diverging.optim.learning_rate = 1e6
  with pytest.raises(loop.NonFiniteLossError, match='The last good checkpoint is step 3 '):
    loop.train_and_evaluate(diverging, tmp_path / 'run')
  assert saved_steps(tmp_path / 'run') == [3]  # 4 (finite, diverged) deleted; 3 kept despite keep_checkpoints=1
  config.train.num_steps = 8
  loop.train_and_evaluate(config, tmp_path / 'run')  # the rerun at a sane rate resumes from 3 and finishes
  step, state = final_checkpoint(config, tmp_path / 'run')
  assert step == 8
  assert all(np.isfinite(x).all() for x in jax.tree.leaves((state.params, state.opt_state)))


def test_nonfinite_state_is_never_saved_and_a_fresh_run_says_there_is_no_good_checkpoint(tiny_tree, tmp_path,
                                                                                       monkeypatch):
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(num_steps=4, checkpoint_every=1, eval_every=100, log_every=4)
  poison(monkeypatch, calls={1})  # NaN gradients: the state after step 1 is NaN, its loss was already NaN
  with pytest.raises(loop.NonFiniteLossError, match='No checkpoint is known good.*start over from step 0'):
    loop.train_and_evaluate(config, tmp_path / 'run')
  assert saved_steps(tmp_path / 'run') == []


def test_rollback_restores_the_last_good_state_skips_the_batches_and_goes_on(tiny_tree, tmp_path, monkeypatch,
                                                                             caplog):
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(num_steps=6, checkpoint_every=2, eval_every=100, log_every=1, on_nonfinite='rollback')
  poison(monkeypatch, calls={4})  # step 4 once: back to 2, skip the 2 batches of steps 3 and 4
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(config, tmp_path / 'run')
  assert 'rolled back to the checkpoint of step 2 and skipped the 2 batches' in caplog.text
  step, state = final_checkpoint(config, tmp_path / 'run')
  assert step == 6 and all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'scalars.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2, 3, 4, 5, 6]  # the rolled-back rows replaced
  assert all(np.isfinite(r['train/loss']) for r in rows if 'train/loss' in r)


def test_rollbacks_are_bounded(tiny_tree, tmp_path, monkeypatch):
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(num_steps=6, checkpoint_every=2, eval_every=100, log_every=1, on_nonfinite='rollback',
                      max_rollbacks=2)
  poison(monkeypatch, calls=set(range(4, 100)))  # every step from the fourth on: 2 is good (step 3 was finite)
  with pytest.raises(loop.NonFiniteLossError, match=r'after 2 rollback\(s\).*last good checkpoint is step 2'):
    loop.train_and_evaluate(config, tmp_path / 'run')
  assert saved_steps(tmp_path / 'run') == [2]
