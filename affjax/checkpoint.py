"""Orbax checkpoints of the train state and the data iterator: the latest N plus the best by validation CCC."""
from __future__ import annotations

import pathlib

import grain
import jax
import orbax.checkpoint as ocp

from affjax.train import metrics as metrics_lib


class Checkpointer:
  """Saves {state, data} under `workdir/checkpoints`; evaluation saves carry metrics and compete for best, by
  `metrics.selection_score` with `selection_weights` (valence, arousal)."""

  def __init__(self, workdir, *, keep: int = 1, selection_weights=(0.5, 0.5)):
    directory = pathlib.Path(workdir).expanduser().absolute() / 'checkpoints'
    score = lambda m: metrics_lib.selection_score(m, tuple(selection_weights))
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=score, reverse=False, n=1, keep_checkpoints_without_metrics=False),
    ])
    self._manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=score, best_mode='max', enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the highest validation selection score, or None if no saved step was evaluated."""
    with_metrics = [s for s in self._manager.all_steps() if self._manager.metrics(s) is not None]
    return self._manager.best_step() if with_metrics else None

  def save(self, step: int, state, data_iterator, metrics: dict[str, float] | None = None):
    """`data_iterator` None: the state alone (a converted model: no data has been read)."""
    args = dict(state=ocp.args.StandardSave(state))
    if data_iterator is not None:
      args['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**args), metrics=metrics)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state at `step` (shaped and sharded like `abstract_state`) and, if given, the iterator."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    args = dict(state=ocp.args.StandardRestore(abstract))
    if data_iterator is not None:
      args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**args))['state']

  def wait(self):
    """Blocks until every asynchronous save has been written."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
