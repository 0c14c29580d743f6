"""The whole run: train, evaluate, checkpoint; resumable by rerunning the same command on the same workdir."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import time

import jax
import tqdm

from affjax import checkpoint, config_validation, evaluate, follower_features, models, parallel, profiling
from affjax import cpu_runtime, workdir_lock
from affjax import logging as affjax_logging
from affjax.data import pipeline, prepare
from affjax.train import optim, state as state_lib, step as step_lib


class NonFiniteLossError(FloatingPointError):
  pass


def start_process(config) -> None:
  """What every command that trains does first: quiet library logs, the CPU runtime settings
  (`cpu_runtime.configure`), join the other hosts if launched so, the compilation cache under
  `config.data.cache_dir` (reruns and resumes load compiled steps instead of recompiling), and validate
  `config` before anything compiles."""
  affjax_logging.quiet_library_info()
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
    self.config = config = follower_features.prepare(config, self.records_dir, self.workdir)
    self.mesh = parallel.make_mesh()
    self.model = models.build_model(config.model)
    self.tx = optim.make_optimizer(config, models.param_labels(config.model))
    self.state = state_lib.initial_state(self.model, self.tx, config, self.mesh, config.seed)
    self.checkpoints = checkpoint.Checkpointer(self.workdir, keep=config.train.keep_checkpoints,
                                               selection_weights=config.eval.selection_weights)
    self.eval_step = step_lib.make_eval_step(self.model)

  def records(self, split: str) -> pipeline.Records:
    return pipeline.open_partition(self.records_dir, split, self.config)

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


def train_and_evaluate(config, workdir) -> dict[str, dict[str, float] | None]:
  """Trains config.train.num_steps steps (resuming from the latest checkpoint), then evaluates the best one;
  `config.train.recipe='epochs'` runs the epoch recipe of `affjax.train.epochs` instead."""
  with workdir_lock.hold(workdir):
    if config.train.get('recipe', 'steps') == 'epochs':
      from affjax.train import epochs  # pylint: disable=g-import-not-at-top  (epochs builds on this module)
      return epochs.train_and_evaluate(config, workdir)
    exp = Experiment(config, workdir)
    try:
      announce_outputs(exp, training=True)
      return _final_evaluation(exp, last_validation=_train(exp))
    finally:
      exp.close()


def evaluate_only(config, workdir) -> dict[str, dict[str, float] | None]:
  with workdir_lock.hold(workdir):
    exp = Experiment(config, workdir)
    try:
      announce_outputs(exp, training=False)
      return _final_evaluation(exp)
    finally:
      exp.close()


def announce_outputs(exp: Experiment, training: bool) -> str:
  """Logs once what the run will and will not produce from the splits the records hold (a split may be empty: no
  test list yet, no validation set); returns the message."""
  count = {split: len(exp.records(split).videos) for split in ('train', 'validation', 'test')}
  will, wont = [], []
  if training:
    will.append(f'training on {count["train"]} videos')
    if count['validation']:
      will.append(f'validation every {exp.config.train.eval_every} steps')
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


def _final_evaluation(exp: Experiment, last_validation=None) -> dict[str, dict[str, float] | None]:
  """Scores the best checkpoint on config.eval.splits and writes metrics and ABAW files (process 0).

  `last_validation` = (step, predictions) of the evaluation that ended training, reused if that step is best.
  """
  step = exp.restore_for_evaluation()
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


def _train(exp: Experiment):
  """Trains to config.train.num_steps; returns (step, validation predictions) of its last evaluation, if any.

  Every checkpoint is saved before the evaluation of its step (a failing evaluation costs no training; a run
  stopped during one evaluates that step first when resumed). Non-finite values stop the run or roll it back
  (`config.train.on_nonfinite`), see `_recover`."""
  config, train_cfg = exp.config, exp.config.train
  has_validation = bool(exp.records('validation').videos)
  evaluates = lambda done: has_validation and (done % train_cfg.eval_every == 0 or done == train_cfg.num_steps)
  start = exp.checkpoints.latest_step() or 0
  pending_validation = bool(start) and evaluates(start) and exp.checkpoints.metrics(start) is None
  if start >= train_cfg.num_steps and not pending_validation:
    return None
  train_iter = iter(pipeline.train_dataset(exp.records('train'), config))
  if start:
    exp.state = exp.checkpoints.restore(start, exp.state, train_iter)
    logging.info('resumed from the checkpoint of step %d', start)
  writer = affjax_logging.MetricWriter(exp.workdir)
  writer.drop_rows(lambda row: row['step'] > start or (pending_validation and row['step'] == start and
                                                       any(k.startswith('validation/') for k in row)))
  profiler = profiling.StepProfiler(exp.workdir, first=start + train_cfg.first_profile,
                                    num_steps=train_cfg.profile_steps)
  train_step = step_lib.make_train_step(exp.model, exp.tx, config)
  unfreeze = train_cfg.unfreeze_step
  if unfreeze:  # second stage of fine-tuning: the same state, every backbone in training mode
    finetune_step = step_lib.make_train_step(exp.model.clone(frozen=()), exp.tx, config)
  warmup = models.warmup_model(exp.model, config.model)  # e.g. sparse_e2e gather: masked-dense stages first
  if warmup:
    warmup_step = step_lib.make_train_step(warmup[0], exp.tx, config)
  lr_schedule = optim.run_schedule(config)
  frames_per_step = train_cfg.batch_size * config.data.window
  progress = tqdm.tqdm(total=train_cfg.num_steps, initial=start, desc='train', unit='step',
                       disable=jax.process_index() != 0, dynamic_ncols=True)
  last_validation = _validate(exp, start, writer, progress) if pending_validation else None
  rollbacks, step = 0, start
  with jax.set_mesh(exp.mesh):
    zero_acc = lambda: jax.device_put(step_lib.zero_accumulator(), parallel.replicated(exp.mesh))
    acc = zero_acc()
    window_start, data_wait = time.perf_counter(), 0.0
    try:
      while step < train_cfg.num_steps:
        t = time.perf_counter()
        batch = parallel.to_global(next(train_iter), exp.mesh)
        data_wait += time.perf_counter() - t
        profiler.before_step(step)
        with jax.profiler.StepTraceAnnotation('train', step_num=step), jax.transfer_guard('disallow'):
          step_fn = finetune_step if unfreeze and step >= unfreeze else train_step
          exp.state, acc = (warmup_step if warmup and step < warmup[1] else step_fn)(exp.state, acc, batch)
        profiler.after_step(step, acc)
        progress.update()
        step = done = step + 1
        last = done == train_cfg.num_steps
        evaluate_now = evaluates(done)
        save = done % train_cfg.checkpoint_every == 0 or last or evaluate_now
        if done % train_cfg.log_every == 0 or last or save:
          logged = jax.device_get(acc)
          if logged['nonfinite'] or (save and not state_is_finite(exp.state)):
            step, rollbacks = _recover(exp, done, train_iter, writer, rollbacks), rollbacks + 1
            progress.n = step
            acc, window_start, data_wait = zero_acc(), time.perf_counter(), 0.0
            continue
          exp.checkpoints.mark_good_before(done)
        if done % train_cfg.log_every == 0 or last:
          elapsed = time.perf_counter() - window_start
          scalars = {f'train/{k}': v / logged['steps'] for k, v in logged.items()
                     if k not in ('steps', 'nonfinite')}
          scalars.update({'train/learning_rate': float(lr_schedule(done - 1)),
                          'perf/steps_per_s': logged['steps'] / elapsed,
                          'perf/frames_per_s': logged['steps'] * frames_per_step / elapsed,
                          'perf/data_wait_fraction': data_wait / elapsed})
          writer.scalars(done, scalars)
          progress.set_postfix(loss=f"{scalars['train/loss']:.3f}", fps=f"{scalars['perf/frames_per_s']:.0f}")
          acc = zero_acc()
          window_start, data_wait = time.perf_counter(), 0.0
        if save:
          exp.checkpoints.save(done, exp.state, train_iter)
        if evaluate_now:
          exp.checkpoints.wait()  # on disk before an evaluation that may fail or be killed
          last_validation = _validate(exp, done, writer, progress)
          window_start = time.perf_counter()  # evaluation time is not training throughput
    finally:
      progress.close()
      writer.close()
      with contextlib.suppress(AttributeError):
        train_iter.close()
  return last_validation


def _validate(exp: Experiment, step: int, writer: affjax_logging.MetricWriter, progress: tqdm.tqdm):
  """Evaluates the saved state of `step` on the validation split; logs and records its metrics (it then
  competes for best); returns (step, predictions)."""
  videos = exp.predict('validation')
  metrics = evaluate.split_metrics(videos)
  writer.scalars(step, {f'validation/{k}': v for k, v in metrics.items()})
  writer.image(step, 'validation/trace', evaluate.trace_image(videos[0]))
  exp.checkpoints.record_metrics(step, metrics)
  progress.write(f'step {step}: validation ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()))
  return step, videos


def state_is_finite(state) -> bool:
  """Whether every parameter, BatchNorm statistic and optimizer slot of `state` is finite."""
  return bool(checkpoint.all_finite((state.params, state.batch_stats, state.opt_state)))


def _recover(exp: Experiment, done: int, train_iter, writer: affjax_logging.MetricWriter, rollbacks: int) -> int:
  """After non-finite values (a training loss up to step `done`, or the state about to be saved): deletes the
  checkpoints newer than the newest good one; with `config.train.on_nonfinite='rollback'` (at most
  `config.train.max_rollbacks` times per run) restores that one, skips the batches trained on since it and
  returns its step to go on from; else raises NonFiniteLossError naming it."""
  train_cfg = exp.config.train
  good = exp.checkpoints.discard_after_good()
  if train_cfg.on_nonfinite == 'rollback' and good is not None and rollbacks < train_cfg.max_rollbacks:
    exp.state = exp.checkpoints.restore(good, exp.state, train_iter)
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
