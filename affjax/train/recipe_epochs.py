"""The epoch recipe (LFAN, spec lfan 4; `config.train.recipe = 'epochs'`): epochs over the training windows, the
validation CCC after each, reduce-on-plateau, revert to the best weights, gradual release of backbone layer groups
and early stopping (`affjax.train.release.EpochController`), then the best weights scored. Hooks on the training
loop (`affjax.train.loop`), which logs, checks for non-finite values, profiles and checkpoints as for any recipe.

An epoch's validation decides what its checkpoint holds (the weights reverted, or a group released with a fresh
optimiser), so it runs before that save. Each epoch's checkpoint holds, in one atomic commit, the train state, the
data iterator, the recipe's state (JSON item `recipe`: epochs done, stopped, the step of the best weights, the
controller) and the best weights (item `best`): a run resumes, or rolls back
(`config.train.on_nonfinite='rollback'`), epoch by epoch.
"""
from __future__ import annotations

import logging

import jax

from affjax import parallel, systems
from affjax.data import views
from affjax.train import metrics as metrics_lib, optim, release, step as step_lib

RECIPE_ITEM, BEST_ITEM = 'recipe', 'best'


class EpochRecipe:
  """The hooks of the epoch recipe on `exp`, an `affjax.train.loop.Experiment`; `exp.config.model.released` (a copy
  of the run's config) follows the releases."""

  validation_steers = True  # the decision changes the state saved at the epoch's end: validation runs first
  validation_cadence = 'after every epoch'

  def __init__(self, exp):
    if not exp.records('validation').videos:
      raise ValueError('config.train.recipe=epochs steers on the validation CCC (plateau, revert, early stop), but the '
                       'records hold no validation video: add the Validation_Set annotations to the tree or train a '
                       'cross-validation fold (--config.data.fold=K)')
    self._exp = exp
    exp.config = config = exp.config.copy_and_resolve_references()
    table, _ = views.of(config).windows(exp.records('train'), config, train=True)
    self.steps_per_epoch = len(table) // config.train.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f'{len(table)} training windows make no batch of config.train.batch_size='
                       f'{config.train.batch_size}; lower it')
    self.num_steps = config.train.num_epochs * self.steps_per_epoch
    latest = exp.checkpoints.latest_step()
    self._load(exp.checkpoints.restore_json(latest, RECIPE_ITEM) if self._has_recipe_state(latest) else None)
    self._best = None  # {'params', 'batch_stats'} on the host; with `_best_step`, restored with the state
    self._train_step = step_lib.make_train_step(exp.model, exp.tx, config)

  def _has_recipe_state(self, step: int | None) -> bool:
    """Whether a checkpoint of `step` exists and holds the recipe's state (a converted model's holds none)."""
    return step is not None and self._exp.checkpoints.has_item(step, RECIPE_ITEM)

  def _load(self, saved: dict | None) -> None:
    """The recipe state of a checkpoint's item `recipe` (None: a fresh run's), the best weights aside."""
    if saved is None:
      train = self._exp.config.train
      self.epoch, self.stopped, self._best_step = 0, False, None
      self._ctl = release.EpochController(
          initial_lr=self._exp.config.optim.learning_rate, released=self._exp.config.model.released,
          num_groups=systems.of(self._exp.config).release_groups, cuts_per_release=train.cuts_per_release,
          early_stop=train.early_stop, patience=train.plateau_patience, factor=train.plateau_factor)
    else:
      self.epoch, self.stopped, self._best_step = saved['epoch'], saved['stopped'], saved['best_step']
      self._ctl = release.EpochController.from_state_dict(saved['controller'])

  def logs(self, done: int) -> bool:
    return done % self._exp.config.train.log_every == 0 or self.saves(done)

  def saves(self, done: int) -> bool:
    return done % self.steps_per_epoch == 0

  def evaluates(self, done: int) -> bool:
    return self.saves(done)

  def train_step(self, step: int):
    """The compiled step of the groups released now."""
    del step
    return self._train_step

  def learning_rate(self, step: int) -> float:
    """The learning rate the plateau schedule set for the current epoch."""
    del step
    return self._ctl.learning_rate

  def checkpoint_items(self) -> dict:
    return dict(json_items={RECIPE_ITEM: dict(epoch=self.epoch, stopped=self.stopped, best_step=self._best_step,
                                              controller=self._ctl.state_dict())},
                tree_items={BEST_ITEM: self._best})

  def restore(self, step: int, train_iter) -> None:
    """Resumes from the checkpoint of `step` (at start, or rolling back): state, iterator, recipe state, best."""
    self._restore(step, train_iter)
    logging.info('resumed after epoch %d (%d groups released)', self.epoch, self._ctl.released)

  def _restore(self, step: int, train_iter) -> None:
    exp = self._exp
    self._load(exp.checkpoints.restore_json(step, RECIPE_ITEM))
    if self._ctl.released != exp.config.model.released:  # the optimiser state's structure follows the groups
      self._build(exp.state.params)
    best = {'params': exp.state.params, 'batch_stats': exp.state.batch_stats}
    restored = exp.checkpoints.restore_items(step, exp.state, train_iter, tree_items={BEST_ITEM: best})
    exp.state, self._best = restored['state'], jax.device_get(restored[BEST_ITEM])

  def _build(self, params) -> None:
    """Model, optimiser and steps for the controller's released groups; the state gets `params` and a fresh
    optimiser state."""
    exp, config = self._exp, self._exp.config
    config.model.released = self._ctl.released
    exp.model = systems.build_model(config.model, config.compat)
    exp.tx = optim.make_optimizer(config, systems.param_labels(config.model))
    exp.eval_step = step_lib.make_eval_step(exp.model)
    self._train_step = step_lib.make_train_step(exp.model, exp.tx, config)
    with jax.set_mesh(exp.mesh):
      opt_state = jax.jit(exp.tx.init, out_shardings=parallel.replicated(exp.mesh))(params)
    exp.state = exp.state.replace(params=params, opt_state=opt_state)

  def after_validation(self, done: int, metrics: dict[str, float]) -> dict[str, float]:
    """The end of an epoch, with its validation `metrics`: keeps the best weights, releases the next group (LR back
    to the initial value, the best weights with a fresh optimiser) or reverts to the best weights, sets the LR and
    whether to stop; returns scalars to log."""
    exp = self._exp
    decision = self._ctl.end_epoch(metrics_lib.selection_score(metrics, exp.config.eval.selection_weights))
    self.epoch += 1
    logging.info('epoch %d: validation %s; %s', self.epoch, metrics, decision)
    if decision.improved or self._best is None:
      self._best = jax.device_get({'params': exp.state.params, 'batch_stats': exp.state.batch_stats})
      self._best_step = done
    repl = parallel.replicated(exp.mesh)
    if decision.release:
      params, stats = jax.device_put((self._best['params'], self._best['batch_stats']), repl)
      exp.state = exp.state.replace(batch_stats=stats)
      self._build(params)
    elif exp.config.train.revert_to_best:
      exp.state = exp.state.replace(**jax.device_put(self._best, repl))
    exp.state = exp.state.replace(opt_state=optim.set_learning_rate(exp.state.opt_state, self._ctl.learning_rate))
    self.stopped = decision.stop
    return {'train/epoch': self.epoch, 'train/released': self._ctl.released}

  def final_state(self) -> int:
    """Loads the best weights (from the latest checkpoint, if this process has not trained; a converted model's
    state, if that holds no recipe state); returns their step."""
    exp = self._exp
    if self._best is None:
      latest = exp.checkpoints.latest_step()
      if not self._has_recipe_state(latest):
        return exp.restore_for_evaluation()
      self._restore(latest, None)
    exp.state = exp.state.replace(**jax.device_put(self._best, parallel.replicated(exp.mesh)))
    return self._best_step
