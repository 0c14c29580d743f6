"""The whole run: one training loop for every recipe, then the evaluation of the best weights; resumable by rerunning
the same command on the same workdir.

The loop (`_train`) runs the compiled train step and its periodic actions: log (train scalars, learning rate,
throughput), check for non-finite values (stop, or roll back: `config.train.on_nonfinite`), checkpoint, validate,
profile (`config.train.profile_steps`). A recipe, named by `config.train.recipe`, supplies what differs as hooks:
`affjax.train.recipe_steps` (the learning rate as a function of the step, warm-up and fine-tuning steps; the
default) and `affjax.train.recipe_epochs` (LFAN: plateau schedule, revert to best, gradual release, early stop).
A recipe has `num_steps`, `stopped`, `validation_steers` (its validation changes the state it saves, so it runs
before the save), `validation_cadence` (words), `logs/saves/evaluates(done)`, `train_step(step)`,
`learning_rate(step)`, `checkpoint_items()` (its state, saved in each checkpoint), `restore(step, train_iter)`,
`after_validation(done, metrics)` and `final_state()` (the weights to score at the end).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import time

import jax
import tqdm

from affjax import checkpoint, config_validation, evaluate, parallel, profiling, systems
from affjax import cpu_runtime, workdir_lock
from affjax import run_logs
from affjax.data import pipeline, prepare, records as records_lib
from affjax.train import optim, recipe_epochs, recipe_steps, state as state_lib, step as step_lib

RECIPES = {'steps': recipe_steps.StepRecipe, 'epochs': recipe_epochs.EpochRecipe}
Recipe = recipe_steps.StepRecipe | recipe_epochs.EpochRecipe


class NonFiniteLossError(FloatingPointError):
  pass


def start_process(config) -> None:
  """What every command that trains does first: quiet library logs, the CPU runtime settings
  (`cpu_runtime.configure`), join the other hosts if launched so, the compilation cache under
  `config.data.cache_dir` (reruns and resumes load compiled steps instead of recompiling), and validate
  `config` before anything compiles."""
  run_logs.quiet_library_info()
  cpu_runtime.configure()  # before jax starts its threads
  parallel.maybe_initialize_distributed()
  jax.config.update('jax_threefry_partitionable', True)
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', os.path.join(os.path.expanduser(config.data.cache_dir), 'jax'))
  logging.info('process %d of %d, devices: %s', jax.process_index(), jax.process_count(), jax.devices())
  config_validation.validate(config)


class Experiment:
  """The pieces of a run that training and evaluation share: records, mesh, model, state, checkpoints."""

  def __init__(self, config, workdir):
    self.workdir = pathlib.Path(workdir).expanduser().absolute()
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.records_dir = prepare.input_dir(config)
    self.config = config = systems.prepare(config, self.records_dir, self.workdir)  # the system's extra inputs
    self.mesh = parallel.make_mesh()
    self.model = systems.build_model(config.model, config.compat)
    self.tx = optim.make_optimizer(config, systems.param_labels(config.model))
    self.state = state_lib.initial_state(self.model, self.tx, config, self.mesh, config.seed)
    self.checkpoints = checkpoint.Checkpointer(self.workdir, keep=config.train.keep_checkpoints,
                                               selection_weights=config.eval.selection_weights)
    self.eval_step = step_lib.make_eval_step(self.model)

  def records(self, split: str) -> records_lib.Records:
    return records_lib.open_partition(self.records_dir, split, self.config)

  def predict(self, split: str) -> list[evaluate.VideoPredictions]:
    """Predicts every frame of every video of `split` with the current state."""
    with jax.set_mesh(self.mesh):
      return evaluate.predict_split(self.state, self.eval_step, self.records(split), self.config, self.mesh)

  def restore_for_evaluation(self) -> int:
    """Loads the best checkpoint (by the validation selection score), else the latest; returns its step."""
    step = self.checkpoints.best_step() or self.checkpoints.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint under {self.workdir}/checkpoints: train first (--mode=train)')
    self.state = self.checkpoints.restore(step, self.state)
    return step

  def close(self):
    self.checkpoints.close()


def make_recipe(exp: Experiment) -> Recipe:
  """The hooks of the recipe `config.train.recipe` names ('steps' by default) on `exp`."""
  name = exp.config.train.recipe
  if name not in RECIPES:
    raise ValueError(f'config.train.recipe={name!r} is not one of {sorted(RECIPES)}')
  return RECIPES[name](exp)


def train_and_evaluate(config, workdir) -> dict[str, dict[str, float] | None]:
  """Trains with the recipe `config.train.recipe` names (resuming from the latest checkpoint), then evaluates the
  best weights."""
  with workdir_lock.hold(workdir):
    exp = Experiment(config, workdir)
    try:
      recipe = make_recipe(exp)
      announce_outputs(exp, recipe)
      return _final_evaluation(exp, recipe, last_validation=_train(exp, recipe))
    finally:
      exp.close()


def evaluate_only(config, workdir) -> dict[str, dict[str, float] | None]:
  with workdir_lock.hold(workdir):
    exp = Experiment(config, workdir)
    try:
      recipe = make_recipe(exp)
      announce_outputs(exp)
      return _final_evaluation(exp, recipe)
    finally:
      exp.close()


def announce_outputs(exp: Experiment, recipe: Recipe | None = None) -> str:
  """Logs once what the run will and will not produce from the splits the records hold (a split may be empty: no
  test list yet, no validation set), training with `recipe` or (None) evaluating only; returns the message."""
  count = {split: len(exp.records(split).videos) for split in ('train', 'validation', 'test')}
  will, wont = [], []
  if recipe is not None:
    will.append(f'training on {count["train"]} videos')
    if count['validation']:
      will.append(f'validation {recipe.validation_cadence}')
    else:
      wont.append('evaluation during training (no validation videos: the last checkpoint is used)')
  for split in ('train', 'validation', 'test'):
    if split not in exp.config.eval.splits:
      if count[split] and split == 'test':
        wont.append(f'test predictions ({count["test"]} test videos; add test to config.eval.splits)')
    elif count[split]:
      will.append(f'{exp.workdir}/predictions/{split}/ ({count[split]} videos)' +
                  (f' and {exp.workdir}/eval/{split}/metrics.json' if split != 'test' else ''))
    else:
      wont.append(f'{split} predictions (the records hold no {split} video' +
                  (f': no test list {exp.config.data.test_list} in the tree)' if split == 'test' else ')'))
  message = 'this run will produce: ' + '; '.join(will or ['nothing'])
  if wont:
    message += '. It will not produce: ' + '; '.join(wont)
  (logging.warning if wont else logging.info)('%s', message)
  return message


def _final_evaluation(exp: Experiment, recipe: Recipe, last_validation=None) -> dict[str, dict[str, float] | None]:
  """Scores the recipe's final weights (the best by validation) on config.eval.splits and writes metrics and ABAW
  files (process 0).

  `last_validation` = (step, predictions, metrics) of the evaluation that ended training, reused if that step's
  weights are the ones scored.
  """
  step = recipe.final_state()
  results = {}
  for split in exp.config.eval.splits:
    if not exp.records(split).videos:
      continue
    reuse = split == 'validation' and last_validation is not None and last_validation[0] == step
    videos = last_validation[1] if reuse else exp.predict(split)
    if jax.process_index() == 0:
      results[split] = evaluate.write_split(exp.workdir, split, videos)
      logging.info('step %d %s: %s', step, split, results[split])
  if jax.process_index() == 0:
    (exp.workdir / 'eval').mkdir(exist_ok=True)
    (exp.workdir / 'eval' / 'summary.json').write_text(json.dumps(dict(step=step, **results), indent=2) + '\n')
  return results


def _train(exp: Experiment, recipe: Recipe):
  """Trains to `recipe.num_steps` or until the recipe stops; returns (step, validation predictions, metrics) of its
  last evaluation, if any.

  After each step, the actions the recipe asks for: log, checkpoint (once the non-finite check passed), validate.
  A checkpoint is saved before the validation of its step (a failing evaluation costs no training; a run stopped
  during one validates that step first when resumed), unless `recipe.validation_steers`. Non-finite values stop
  the run or roll it back (`config.train.on_nonfinite`), see `_recover`."""
  config, train_cfg = exp.config, exp.config.train
  start = exp.checkpoints.latest_step() or 0
  pending_validation = (bool(start) and not recipe.validation_steers and recipe.evaluates(start) and
                        exp.checkpoints.metrics(start) is None)
  if (start >= recipe.num_steps or recipe.stopped) and not pending_validation:
    return None
  train_iter = iter(pipeline.train_dataset(exp.records('train'), config))
  if start:
    recipe.restore(start, train_iter)
  writer = run_logs.MetricWriter(exp.workdir)
  writer.drop_rows(lambda row: row['step'] > start or (pending_validation and row['step'] == start and
                                                       any(k.startswith('validation/') for k in row)))
  profiler = profiling.StepProfiler(exp.workdir, first=start + train_cfg.first_profile,
                                    num_steps=train_cfg.profile_steps)
  frames_per_step = train_cfg.batch_size * config.data.window
  progress = tqdm.tqdm(total=recipe.num_steps, initial=start, desc='train', unit='step',
                       disable=jax.process_index() != 0, dynamic_ncols=True)
  last_validation = None
  if pending_validation:
    last_validation = _validate(exp, recipe, start, writer, progress)
    exp.checkpoints.record_metrics(start, last_validation[2])
  rollbacks, step = 0, start
  with jax.set_mesh(exp.mesh):
    zero_acc = lambda: jax.device_put(step_lib.zero_accumulator(), parallel.replicated(exp.mesh))
    acc = zero_acc()
    window_start, data_wait = time.perf_counter(), 0.0
    try:
      while step < recipe.num_steps and not recipe.stopped:
        t = time.perf_counter()
        batch = parallel.to_global(next(train_iter), exp.mesh)
        data_wait += time.perf_counter() - t
        profiler.before_step(step)
        with jax.profiler.StepTraceAnnotation('train', step_num=step), jax.transfer_guard('disallow'):
          exp.state, acc = recipe.train_step(step)(exp.state, acc, batch)
        profiler.after_step(step, acc)
        progress.update()
        step = done = step + 1
        log, save, validate = recipe.logs(done), recipe.saves(done), recipe.evaluates(done)
        if log or save:
          logged = jax.device_get(acc)
          if logged['nonfinite'] or (save and not state_is_finite(exp.state)):
            step, rollbacks = _recover(exp, recipe, done, train_iter, writer, rollbacks), rollbacks + 1
            progress.n = step
            acc, window_start, data_wait = zero_acc(), time.perf_counter(), 0.0
            continue
          exp.checkpoints.mark_good_before(done)
        if log:
          elapsed = time.perf_counter() - window_start
          scalars = {f'train/{k}': v / logged['steps'] for k, v in logged.items()
                     if k not in ('steps', 'nonfinite')}
          scalars.update({'train/learning_rate': recipe.learning_rate(done - 1),
                          'perf/steps_per_s': logged['steps'] / elapsed,
                          'perf/frames_per_s': logged['steps'] * frames_per_step / elapsed,
                          'perf/data_wait_fraction': data_wait / elapsed})
          writer.scalars(done, scalars)
          progress.set_postfix(loss=f"{scalars['train/loss']:.3f}", fps=f"{scalars['perf/frames_per_s']:.0f}")
          acc = zero_acc()
          window_start, data_wait = time.perf_counter(), 0.0
        if validate and recipe.validation_steers:
          last_validation = _validate(exp, recipe, done, writer, progress)
        if save:
          exp.checkpoints.save(done, exp.state, train_iter, **recipe.checkpoint_items())
        if validate and not recipe.validation_steers:
          exp.checkpoints.wait()  # on disk before an evaluation that may fail or be killed
          last_validation = _validate(exp, recipe, done, writer, progress)
        if validate:
          exp.checkpoints.record_metrics(done, last_validation[2])  # the saved step competes for best
          window_start = time.perf_counter()  # evaluation time is not training throughput
    finally:
      progress.close()
      writer.close()
      with contextlib.suppress(AttributeError):
        train_iter.close()
  return last_validation


def _validate(exp: Experiment, recipe: Recipe, step: int, writer: run_logs.MetricWriter, progress: tqdm.tqdm):
  """Evaluates the state of `step` on the validation split, logs its metrics and hands them to the recipe; returns
  (step, predictions, metrics)."""
  videos = exp.predict('validation')
  metrics = evaluate.split_metrics(videos)
  writer.scalars(step, {f'validation/{k}': v for k, v in metrics.items()})
  writer.image(step, 'validation/trace', evaluate.trace_image(videos[0]))
  progress.write(f'step {step}: validation ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()))
  recipe_scalars = recipe.after_validation(step, metrics)
  if recipe_scalars:
    writer.scalars(step, recipe_scalars)
  return step, videos, metrics


def state_is_finite(state) -> bool:
  """Whether every parameter, BatchNorm statistic and optimizer slot of `state` is finite."""
  return bool(checkpoint.all_finite((state.params, state.batch_stats, state.opt_state)))


def _recover(exp: Experiment, recipe: Recipe, done: int, train_iter, writer: run_logs.MetricWriter,
             rollbacks: int) -> int:
  """After non-finite values (a training loss up to step `done`, or the state about to be saved): deletes the
  checkpoints newer than the newest good one; with `config.train.on_nonfinite='rollback'` (at most
  `config.train.max_rollbacks` times per run) restores that one (the state, the iterator and the recipe's state),
  skips the batches trained on since it and returns its step to go on from; else raises NonFiniteLossError naming
  it."""
  train_cfg = exp.config.train
  good = exp.checkpoints.discard_after_good()
  if train_cfg.on_nonfinite == 'rollback' and good is not None and rollbacks < train_cfg.max_rollbacks:
    recipe.restore(good, train_iter)
    for _ in range(done - good):
      next(train_iter)
    writer.drop_rows(lambda row: row['step'] > good)
    logging.warning('non-finite values by step %d: rolled back to the checkpoint of step %d and skipped the %d '
                    'batches after it (rollback %d of at most config.train.max_rollbacks=%d)', done, good,
                    done - good, rollbacks + 1, train_cfg.max_rollbacks)
    return good
  raise nonfinite_error(done, good, rolled_back=rollbacks if train_cfg.on_nonfinite == 'rollback' else None)


def nonfinite_error(step: int, good: int | None, rolled_back: int | None = None) -> NonFiniteLossError:
  """The error that stops a run at non-finite values by `step`, naming the newest good checkpoint `good`."""
  what = f'non-finite values (training loss or state) by step {step}'
  if rolled_back is not None and good is not None:
    what += f', after {rolled_back} rollback(s) (config.train.max_rollbacks)'
  fix = 'lower config.optim.learning_rate or set config.optim.grad_clip_norm'
  if good is None:
    return NonFiniteLossError(
        f'{what}; the run stopped. No checkpoint is known good (none was saved before the first non-finite '
        f'steps), so none is kept: {fix}, then rerun the same command to start over from step 0.')
  return NonFiniteLossError(
      f'{what}; the run stopped. The last good checkpoint is step {good} (the losses after it were finite; newer '
      f'ones were deleted): {fix}, then rerun the same command to resume from it, or set '
      "config.train.on_nonfinite='rollback' to skip the offending batches.")
