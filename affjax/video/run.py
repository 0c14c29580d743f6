"""A trained run, loaded for prediction: its model and the weights of its best checkpoint (by the validation
selection score), else its latest; no records are opened."""
from __future__ import annotations

import dataclasses
import pathlib

import jax

from affjax import checkpoint, parallel, systems
from affjax.train import optim, state as state_lib, step as step_lib


@dataclasses.dataclass
class LoadedRun:
  config: object
  mesh: jax.sharding.Mesh
  state: state_lib.TrainState
  eval_step: object  # (state, global batch) -> [B, T, 2] (`step.make_eval_step`)
  step: int

  @property
  def needs_audio(self) -> bool:
    return 'audio' in self.config.model.modalities


def load_run(config, workdir) -> LoadedRun:
  workdir = pathlib.Path(workdir).expanduser().absolute()
  model = systems.build_model(config.model, config.compat)
  mesh = parallel.make_mesh()
  tx = optim.make_optimizer(config, systems.param_labels(config.model))
  state = state_lib.initial_state(model, tx, config, mesh, config.seed)
  if not (workdir / 'checkpoints').is_dir():
    raise FileNotFoundError(f'{workdir}: no checkpoints/ folder; --workdir must be a trained run')
  checkpoints = checkpoint.Checkpointer(workdir, selection_weights=config.eval.selection_weights)
  try:
    step = checkpoints.best_step() or checkpoints.latest_step()
    if step is None:
      raise FileNotFoundError(f'{workdir}/checkpoints holds no checkpoint: train the run first')
    state = checkpoints.restore(step, state)
  finally:
    checkpoints.close()
  return LoadedRun(config=config, mesh=mesh, state=state, eval_step=step_lib.make_eval_step(model), step=step)
