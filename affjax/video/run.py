"""A trained run, loaded for prediction: its model and the weights of its best checkpoint (by the validation
selection score), else its latest; no records are opened. A run whose followers read a feature cache (LFAN's
VGGish) gets its features for every video from the video's audio, by the weights its cache was built with, and
the feature statistics it saved from its training partition (`systems.trained_config`)."""
from __future__ import annotations

import dataclasses
import functools
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

  @functools.cached_property
  def side(self):
    """(part -> per-frame shape, the function computing them from records) of the features the run's windows join
    to the frames (`views.video_records`), or None."""
    shapes = systems.side_shapes(self.config)
    return (shapes, systems.side_features(self.config)) if shapes else None


def new_run(config, seed: int) -> LoadedRun:
  """A run of `config` with the initial weights of `seed` (step 0), for videos: `config.data.side_features_dir`
  is not read (the side features of a video come from its audio, `LoadedRun.side`)."""
  config = config.copy_and_resolve_references()
  config.data.side_features_dir = ''
  model = systems.build_model(config.model, config.compat)
  mesh = parallel.make_mesh()
  tx = optim.make_optimizer(config, systems.param_labels(config.model))
  state = state_lib.initial_state(model, tx, config, mesh, seed)
  return LoadedRun(config=config, mesh=mesh, state=state, eval_step=step_lib.make_eval_step(model), step=0)


def load_run(config, workdir) -> LoadedRun:
  workdir = pathlib.Path(workdir).expanduser().absolute()
  if not (workdir / 'checkpoints').is_dir():
    raise FileNotFoundError(f'{workdir}: no checkpoints/ folder; --workdir must be a trained run')
  run = new_run(systems.trained_config(config, workdir), config.seed)
  checkpoints = checkpoint.Checkpointer(workdir, selection_weights=config.eval.selection_weights)
  try:
    step = checkpoints.best_step() or checkpoints.latest_step()
    if step is None:
      raise FileNotFoundError(f'{workdir}/checkpoints holds no checkpoint: train the run first')
    run.state, run.step = checkpoints.restore(step, run.state), step
  finally:
    checkpoints.close()
  return run
