"""The step recipe (`config.train.recipe = 'steps'`, the default): `config.train.num_steps` steps at a learning rate
that is a function of the step (`affjax.train.optim.run_schedule`), a checkpoint every `checkpoint_every` steps, a
validation every `eval_every` steps (after its step's checkpoint is saved), and at the end the best checkpoint by
validation scored. Hooks on the training loop (`affjax.train.loop`).

The compiled step of each step: the masked-dense warm-up model of a sparse_e2e gather model
(`systems.warmup_model`) for its first steps, with two-stage fine-tuning (`train.unfreeze_step`) every backbone in
training mode from that step on, else the model itself. Everything else follows from the step and the train state:
the recipe keeps no state of its own.
"""
from __future__ import annotations

import logging

from affjax import systems
from affjax.train import optim, step as step_lib


class StepRecipe:
  """The hooks of the step recipe on `exp`, an `affjax.train.loop.Experiment`."""

  validation_steers = False  # the validation changes nothing: it runs after its step's checkpoint is saved
  stopped = False  # no early stop

  def __init__(self, exp):
    self._exp, self._train = exp, exp.config.train
    config = exp.config
    self.num_steps = self._train.num_steps
    self.validation_cadence = f'every {self._train.eval_every} steps'
    self._has_validation = bool(exp.records('validation').videos)
    self._schedule = optim.run_schedule(config)
    self._step = step_lib.make_train_step(exp.model, exp.tx, config)
    if self._train.unfreeze_step:  # second stage of fine-tuning: the same state, every backbone in training mode
      self._finetune_step = step_lib.make_train_step(exp.model.clone(frozen=()), exp.tx, config)
    warmup = systems.warmup_model(exp.model, config.model)  # e.g. sparse_e2e gather: masked-dense stages first
    self._warmup = (step_lib.make_train_step(warmup[0], exp.tx, config), warmup[1]) if warmup else None

  def logs(self, done: int) -> bool:
    return done % self._train.log_every == 0 or done == self.num_steps

  def evaluates(self, done: int) -> bool:
    return self._has_validation and (done % self._train.eval_every == 0 or done == self.num_steps)

  def saves(self, done: int) -> bool:
    return done % self._train.checkpoint_every == 0 or done == self.num_steps or self.evaluates(done)

  def train_step(self, step: int):
    """The compiled step that trains step `step` (0-based)."""
    if self._warmup and step < self._warmup[1]:
      return self._warmup[0]
    if self._train.unfreeze_step and step >= self._train.unfreeze_step:
      return self._finetune_step
    return self._step

  def learning_rate(self, step: int) -> float:
    """The learning rate of the trained parameters at step `step` (0-based)."""
    return float(self._schedule(step))

  def checkpoint_items(self) -> dict:
    """What each checkpoint holds besides the train state and the data iterator: nothing."""
    return {}

  def restore(self, step: int, train_iter) -> None:
    """Resumes from the checkpoint of `step` (at start, or rolling back): the state and the iterator."""
    self._exp.state = self._exp.checkpoints.restore(step, self._exp.state, train_iter)
    logging.info('resumed from the checkpoint of step %d', step)

  def after_validation(self, done: int, metrics: dict[str, float]) -> dict[str, float]:
    """Called with the validation metrics of step `done`; returns scalars to log: none."""
    del done, metrics
    return {}

  def final_state(self) -> int:
    """Loads the weights to score at the end, the best checkpoint's (else the latest); returns its step."""
    return self._exp.restore_for_evaluation()
