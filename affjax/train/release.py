"""LFAN's epoch-level recipe decisions (spec lfan 4): reduce-on-plateau on validation CCC, gradual release of
backbone layer groups after plateau cuts, early stopping. Pure host-side bookkeeping, one call per epoch.

After each epoch's validation metric, `EpochController.end_epoch(metric)` returns what the loop does next:
the learning rate, whether to release the next layer group (LR back to the initial value, fresh optimiser and
plateau scheduler, best weights reloaded, early-stopping counter reset), and whether to stop.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ReduceOnPlateau:
  """PyTorch `ReduceLROnPlateau(mode='max', threshold_mode='rel', cooldown=0, min_lr=0)`: the LR is multiplied by
  `factor` when the metric has not exceeded `best * (1 + threshold)` for more than `patience` epochs."""
  lr: float
  factor: float = 0.1
  patience: int = 5
  threshold: float = 1e-4
  eps: float = 1e-8
  best: float = float('-inf')
  bad_epochs: int = 0

  def step(self, metric: float) -> bool:
    """Records one epoch's metric; returns True if the LR was cut."""
    if metric > self.best * (1.0 + self.threshold):  # -inf at the start: any metric is better
      self.best, self.bad_epochs = metric, 0
    else:
      self.bad_epochs += 1
    if self.bad_epochs > self.patience:
      self.bad_epochs = 0
      new_lr = self.lr * self.factor
      if self.lr - new_lr > self.eps:
        self.lr = new_lr
        return True
    return False


@dataclasses.dataclass(frozen=True)
class Decision:
  learning_rate: float
  improved: bool  # a new best metric: the loop keeps these weights as the best
  release: bool  # release the next layer group (fresh optimiser, best weights reloaded)
  stop: bool


@dataclasses.dataclass
class EpochController:
  """Plateau cuts, gradual release and early stopping over epochs (spec lfan 4, bugs 8 and 9 fixed).

  `released`: groups released at the start; `num_groups`: all there are. The next group is released after
  `cuts_per_release` plateau cuts since the last release; when none is left that trigger stops training.
  Training also stops after `early_stop` epochs without a new best (the counter restarts at each release).
  """
  initial_lr: float
  released: int
  num_groups: int
  cuts_per_release: int = 2
  early_stop: int = 20
  patience: int = 5
  factor: float = 0.1
  best: float = float('-inf')
  epochs_without_improvement: int = 0
  cuts: int = 0
  scheduler: ReduceOnPlateau | None = None

  def __post_init__(self):
    if self.scheduler is None:
      self.scheduler = ReduceOnPlateau(self.initial_lr, self.factor, self.patience)

  @property
  def learning_rate(self) -> float:
    return self.scheduler.lr

  def end_epoch(self, metric: float) -> Decision:
    improved = metric > self.best
    if improved:
      self.best, self.epochs_without_improvement = metric, 0
    else:
      self.epochs_without_improvement += 1
    self.cuts += self.scheduler.step(metric)
    release = stop = False
    if self.cuts >= self.cuts_per_release:
      if self.released < self.num_groups:
        self.released += 1
        release = True
        self.cuts, self.epochs_without_improvement = 0, 0
        self.scheduler = ReduceOnPlateau(self.initial_lr, self.factor, self.patience)
      else:
        stop = True
    if self.epochs_without_improvement >= self.early_stop:
      stop = True
    return Decision(self.learning_rate, improved, release, stop)

  def state_dict(self) -> dict:
    """JSON-serialisable state, for resuming (`EpochController.from_state_dict`)."""
    return dict(dataclasses.asdict(self), scheduler=dataclasses.asdict(self.scheduler))

  @classmethod
  def from_state_dict(cls, state: dict) -> 'EpochController':
    return cls(**dict(state, scheduler=ReduceOnPlateau(**state['scheduler'])))
