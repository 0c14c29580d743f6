"""Orbax checkpoints of the train state and the data iterator: the latest N, the best by validation CCC and the
newest one known to be good.

Next to the checkpoints, `checkpoints/record.json` notes per step what is learnt after its save: its validation
metrics (evaluation runs after the save, so that a failing evaluation costs no training) and whether training on
from it gave finite losses (a checkpoint is "good" once the losses of the steps after it were finite).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from affjax.train import metrics as metrics_lib

RECORD_FILE = 'record.json'


@jax.jit
def all_finite(tree) -> jax.Array:
  """True if every floating-point leaf of `tree` is finite (one scalar, computed where the arrays live)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.bool_(True)


@dataclasses.dataclass
class _KeepRecorded:
  """Orbax preservation policy: keeps the best evaluated step and the newest good step of the record."""
  checkpointer: Checkpointer

  def should_preserve(self, checkpoints, *, context):
    del context
    steps = [c.step for c in checkpoints]
    keep = {self.checkpointer.best_step(steps), self.checkpointer.good_step(steps)}
    return [step in keep for step in steps]


class Checkpointer:
  """Saves {state, data, extra items} under `workdir/checkpoints`; evaluated steps compete for best, by
  `metrics.selection_score` with `selection_weights` (valence, arousal)."""

  def __init__(self, workdir, *, keep: int = 1, selection_weights=(0.5, 0.5)):
    self.directory = pathlib.Path(workdir).expanduser().absolute() / 'checkpoints'
    self._score = lambda m: metrics_lib.selection_score(m, tuple(selection_weights))
    try:
      record = json.loads((self.directory / RECORD_FILE).read_text())
    except FileNotFoundError:
      record = {}
    self._metrics = {int(step): m for step, m in record.get('metrics', {}).items()}
    self._good = record.get('good')
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep), _KeepRecorded(self)])
    self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def best_step(self, steps=None) -> int | None:
    """The step (of `steps`, by default every saved one) with the highest validation selection score, or None
    if none of them was evaluated."""
    steps = self.all_steps() if steps is None else steps
    scored = [s for s in steps if s in self._metrics]
    return max(scored, key=lambda s: (self._score(self._metrics[s]), s)) if scored else None

  def metrics(self, step: int) -> dict[str, float] | None:
    return self._metrics.get(step)

  def good_step(self, steps=None) -> int | None:
    """The newest step (of `steps`, by default every saved one) known to be good."""
    steps = self.all_steps() if steps is None else steps
    good = [s for s in steps if self._good is not None and s <= self._good]
    return max(good) if good else None

  def record_metrics(self, step: int, metrics: dict[str, float]) -> None:
    """Notes the validation `metrics` of the saved `step` (it then competes for best)."""
    self._metrics[step] = {k: float(v) for k, v in metrics.items()}
    self._write_record()

  def mark_good_before(self, step: int) -> None:
    """Notes that the losses of every step up to `step` were finite: the saved steps before it are good."""
    saved = [s for s in self.all_steps() if s < step]
    if saved and max(saved) != self._good:
      self._good = max(saved)
      self._write_record()

  def discard_after_good(self) -> int | None:
    """Deletes every checkpoint newer than the newest good one (they may hold a diverged state, and a rerun
    resumes from the latest); returns that good step, or None if there is none."""
    self._manager.wait_until_finished()
    good = self.good_step()
    for step in self.all_steps():
      if good is None or step > good:
        self._manager.delete(step)
    return good

  def _write_record(self) -> None:
    if jax.process_index() != 0:
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    tmp = self.directory / f'.{RECORD_FILE}.tmp'
    tmp.write_text(json.dumps(dict(good=self._good, metrics={str(s): m for s, m in sorted(self._metrics.items())}),
                              indent=1))
    os.replace(tmp, self.directory / RECORD_FILE)

  def save(self, step: int, state, data_iterator, *, json_items=None, tree_items=None):
    """Saves `state`, the iterator's position (`data_iterator` None: the state alone, as for a converted model
    that has read no data) and the extra items (name -> JSON-able dict, name -> pytree) as one checkpoint,
    committed atomically, asynchronously."""
    items = dict(state=ocp.args.StandardSave(state))
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    items.update({name: ocp.args.JsonSave(item) for name, item in (json_items or {}).items()})
    items.update({name: ocp.args.StandardSave(item) for name, item in (tree_items or {}).items()})
    self._manager.save(step, args=ocp.args.Composite(**items))

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state at `step` (shaped and sharded like `abstract_state`) and, if given, the iterator."""
    return self.restore_items(step, abstract_state, data_iterator)['state']

  def restore_items(self, step: int, abstract_state, data_iterator=None, *, json_items=(), tree_items=None) -> dict:
    """The state and the extra items (names of JSON items; name -> a pytree shaped like the saved one) at
    `step`, by name; restores the iterator too if given."""
    args = dict(state=ocp.args.StandardRestore(_abstract(abstract_state)))
    if data_iterator is not None:
      args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    args.update({name: ocp.args.JsonRestore() for name in json_items})
    args.update({name: ocp.args.StandardRestore(_abstract(item)) for name, item in (tree_items or {}).items()})
    return dict(self._manager.restore(step, args=ocp.args.Composite(**args)))

  def has_item(self, step: int, name: str) -> bool:
    """Whether the checkpoint of `step` holds the item `name` (a converted model's holds the state alone)."""
    return (self.directory / str(step) / name).is_dir()

  def restore_json(self, step: int, name: str) -> dict:
    """The JSON item `name` of the checkpoint of `step` alone."""
    return self._manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))[name]

  def wait(self):
    """Blocks until every asynchronous save has been written."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
