"""What a data view gives the generic parts of affjax: the Grain pipeline, the train state's initialisation, the
evaluation, the config check and the feature caches. `affjax.data.views.VIEWS` finds a view by `config.data.view`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

# row of a window table -> the window's arrays (picklable, for grain workers; `rng` given when training)
Loader = Callable[..., dict[str, np.ndarray]]


class SplitPredictions(Protocol):
  """A split's window predictions mapped back to the frames of its videos."""

  def add(self, window: Mapping[str, np.ndarray], pred: np.ndarray) -> None:
    """Adds the predictions `[T, 2]` of one window (`window`: its loader's arrays, host numpy)."""

  def videos(self) -> list[Any]:
    """Per video of the split, in order: its `affjax.data.views.predictions.VideoPredictions` of every frame."""


@dataclasses.dataclass(frozen=True)
class View:
  """A data view: how windows are cut from the chunk records, what a window holds and how its predictions map
  back to frames.

  name: the value of `config.data.view` that selects it.
  windows(records, config, *, train) -> (table `[M, 2]` int64, loader): every window of `records` in order and
    its loader (`Loader`); training windows are augmented.
  example_batch(config, batch_size) -> zeros shaped like a batch (the model's input signature).
  predictions(records, config) -> a `SplitPredictions` of `records`' videos.
  validate(config) -> None; raises ValueError naming the field (`require`) for a config the view cannot read.
  chunk_loader(records, config) -> the loader of a chunk row (video index, start frame) giving the backbones'
    inputs for the chunk's frames and their face_mask `[C]` (feature caches); None: no feature cache.
  backbone_inputs: the batch entries the backbones read (what a feature cache replaces).
  unit(config) -> (what one window holds: 'frames', 'clips' or 'tokens', how many of them).
  """
  name: str
  windows: Callable[..., tuple[np.ndarray, Loader]]
  example_batch: Callable[[Any, int], dict[str, np.ndarray]]
  predictions: Callable[[Any, Any], SplitPredictions]
  validate: Callable[[Any], None]
  chunk_loader: Callable[[Any, Any], Loader] | None = None
  backbone_inputs: tuple[str, ...] = ()
  unit: Callable[[Any], tuple[str, int]] = lambda config: ('frames', config.data.window)


def require(ok: bool, field: str, value, expected: str) -> None:
  """Raises ValueError 'config.<field>=<value> is invalid: <expected>' unless `ok`."""
  if not ok:
    raise ValueError(f'config.{field}={value!r} is invalid: {expected}')


def window_starts(num_frames: int, window: int, hop: int) -> np.ndarray:
  """Starts 0, hop, 2*hop, ... of windows covering every frame; a start whose frames are all covered by the
  previous window is skipped, and the last window may run past the end (padded and masked)."""
  starts = np.arange(0, num_frames, hop)
  return starts[(starts == 0) | (starts + window - hop < num_frames)]
