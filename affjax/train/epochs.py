"""The epoch recipe (LFAN, spec lfan 4; `config.train.recipe = 'epochs'`): epochs over the training windows, the
validation CCC after each, reduce-on-plateau, revert to the best weights, gradual release of backbone layer groups
and early stopping (`affjax.train.release.EpochController`), then the best weights scored on `config.eval.splits`.

Resumable epoch by epoch: each epoch's checkpoint holds, in one atomic commit, the train state, the data
iterator, the recipe's state (item `recipe`: epochs done, stopped, the controller) and the best weights so far
(item `best`).
"""
from __future__ import annotations

import contextlib
import logging
import pathlib

import jax
import tqdm

from affjax import checkpoint, evaluate, models, parallel
from affjax import logging as affjax_logging
from affjax.data import pipeline
from affjax.models.backbones import ir50
from affjax.train import loop, metrics as metrics_lib, optim, release, step as step_lib

RECIPE_ITEM, BEST_ITEM = 'recipe', 'best'


def saved_recipe(workdir) -> dict | None:
  """The recipe state of the latest checkpoint under `workdir` ({epoch, stopped, controller}), or None."""
  checkpoints = checkpoint.Checkpointer(workdir)
  try:
    step = checkpoints.latest_step()
    return None if step is None else checkpoints.restore_json(step, RECIPE_ITEM)
  finally:
    checkpoints.close()


def _controller(config, saved: dict | None) -> release.EpochController:
  if saved:
    return release.EpochController.from_state_dict(saved['controller'])
  train = config.train
  return release.EpochController(initial_lr=config.optim.learning_rate, released=config.model.released,
                                 num_groups=len(ir50.RELEASE_GROUPS), cuts_per_release=train.cuts_per_release,
                                 early_stop=train.early_stop, patience=train.plateau_patience,
                                 factor=train.plateau_factor)


def _rebuild_for_release(exp: loop.Experiment, config, best) -> None:
  """New model and optimiser at `config.model.released`, state reset to `best` with a fresh optimiser state."""
  exp.model = models.build_model(config.model, config.compat)
  exp.tx = optim.make_optimizer(config, models.param_labels(config.model))
  exp.eval_step = step_lib.make_eval_step(exp.model)
  repl = parallel.replicated(exp.mesh)
  params, stats = jax.device_put((best['params'], best['batch_stats']), repl)
  exp.state = exp.state.replace(params=params, batch_stats=stats,
                                opt_state=jax.jit(exp.tx.init, out_shardings=repl)(params))


def train_and_evaluate(config, workdir) -> dict[str, dict[str, float] | None]:
  """Trains up to `config.train.num_epochs` epochs with the recipe, then evaluates the best weights."""
  workdir = pathlib.Path(workdir).expanduser().absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  saved = saved_recipe(workdir)
  ctl = _controller(config, saved)
  config = config.copy_and_resolve_references()
  config.model.released = ctl.released
  exp = loop.Experiment(config, workdir)
  config = exp.config  # with the followers' inputs resolved
  if not exp.records('validation').videos:
    exp.close()
    raise ValueError('config.train.recipe=epochs steers on the validation CCC (plateau, revert, early stop), but the '
                     'records hold no validation video: add the Validation_Set annotations to the tree or train a '
                     'cross-validation fold (--config.data.fold=K)')
  loop.announce_outputs(exp, training=True)
  train_iter = iter(pipeline.train_dataset(exp.records('train'), config))
  writer = affjax_logging.MetricWriter(workdir)
  try:
    table = pipeline.window_table(exp.records('train').videos, config.data.window, config.data.train_hop)
    steps_per_epoch = len(table) // config.train.batch_size
    if steps_per_epoch == 0:
      raise ValueError(f'{len(table)} training windows make no batch of config.train.batch_size='
                       f'{config.train.batch_size}; lower it')
    epoch, stopped = (saved['epoch'], saved['stopped']) if saved else (0, False)
    best = None
    if saved:
      restored = exp.checkpoints.restore_items(
          exp.checkpoints.latest_step(), exp.state, train_iter,
          tree_items={BEST_ITEM: {'params': exp.state.params, 'batch_stats': exp.state.batch_stats}})
      exp.state, best = restored['state'], jax.device_get(restored[BEST_ITEM])
      writer.drop_rows(lambda row: row['step'] > epoch)  # rows of epochs the kill did not save: trained again
      logging.info('resumed after epoch %d (%d groups released)', epoch, ctl.released)
    with jax.set_mesh(exp.mesh):
      exp.state = exp.state.replace(opt_state=optim.set_learning_rate(exp.state.opt_state, ctl.learning_rate))
      train_step = step_lib.make_train_step(exp.model, exp.tx, config)
      while epoch < config.train.num_epochs and not stopped:
        acc = jax.device_put(step_lib.zero_accumulator(), parallel.replicated(exp.mesh))
        for _ in tqdm.tqdm(range(steps_per_epoch), desc=f'epoch {epoch}', unit='step',
                           disable=jax.process_index() != 0, dynamic_ncols=True):
          batch = parallel.to_global(next(train_iter), exp.mesh)
          exp.state, acc = train_step(exp.state, acc, batch)
        logged, step = jax.device_get(acc), int(exp.state.step)
        if logged['nonfinite'] or not loop.state_is_finite(exp.state):
          raise loop.nonfinite_error(step, exp.checkpoints.discard_after_good())
        exp.checkpoints.mark_good_before(step)
        metrics = evaluate.split_metrics(exp.predict('validation'))
        decision = ctl.end_epoch(metrics_lib.selection_score(metrics, config.eval.selection_weights))
        epoch += 1
        writer.scalars(epoch, {'train/loss': logged['loss'] / logged['steps'], 'train/learning_rate': ctl.learning_rate,
                               'train/released': ctl.released, **{f'validation/{k}': v for k, v in metrics.items()}})
        logging.info('epoch %d: validation %s; %s', epoch, metrics, decision)
        if decision.improved or best is None:
          best = jax.device_get({'params': exp.state.params, 'batch_stats': exp.state.batch_stats})
        if decision.release:
          config.model.released = ctl.released
          _rebuild_for_release(exp, config, best)
          train_step = step_lib.make_train_step(exp.model, exp.tx, config)
        elif config.train.revert_to_best:
          exp.state = exp.state.replace(**jax.device_put(
              {'params': best['params'], 'batch_stats': best['batch_stats']}, parallel.replicated(exp.mesh)))
        exp.state = exp.state.replace(opt_state=optim.set_learning_rate(exp.state.opt_state, ctl.learning_rate))
        stopped = decision.stop
        exp.checkpoints.save(step, exp.state, train_iter,
                             json_items={RECIPE_ITEM: dict(epoch=epoch, stopped=stopped, controller=ctl.state_dict())},
                             tree_items={BEST_ITEM: best})
        exp.checkpoints.record_metrics(step, metrics)
      return _evaluate_best(exp, config, best)
  finally:
    writer.close()
    with contextlib.suppress(AttributeError):
      train_iter.close()
    exp.close()


def _evaluate_best(exp: loop.Experiment, config, best) -> dict[str, dict[str, float] | None]:
  """Scores the best weights on config.eval.splits; writes metrics and ABAW files (process 0)."""
  exp.state = exp.state.replace(**jax.device_put({'params': best['params'], 'batch_stats': best['batch_stats']},
                                                 parallel.replicated(exp.mesh)))
  results = {}
  for split in config.eval.splits:
    if exp.records(split).videos:
      videos = exp.predict(split)
      if jax.process_index() == 0:
        results[split] = evaluate.write_split(exp.workdir, split, videos)
  return results
