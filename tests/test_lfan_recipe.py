"""LFAN's epoch recipe decisions: plateau cuts against PyTorch's ReduceLROnPlateau, release and early stopping."""
import numpy as np
import pytest

from affjax.train import release


def test_reduce_on_plateau_matches_pytorch():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  # rising, then flat with noise below the threshold, then negative values (the relative threshold flips sign)
  metrics = np.concatenate([np.linspace(0.1, 0.4, 8), 0.4 + rng.uniform(-1e-5, 1e-5, 30), rng.uniform(-0.3, -0.1, 20)])
  opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-5)
  ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode='max', factor=0.1, patience=5)
  ours = release.ReduceOnPlateau(1e-5)
  for m in metrics:
    ref.step(float(m))
    ours.step(float(m))
    assert ours.lr == pytest.approx(opt.param_groups[0]['lr'], rel=1e-12)
  assert ours.lr < 1e-7  # several cuts happened


def test_release_after_two_cuts_then_stop_when_nothing_left():
  """Constant metric: cut after epochs 6 and 12 (patience 5) -> release; the third group's second pair of cuts
  stops training."""
  ctl = release.EpochController(initial_lr=1e-5, released=2, num_groups=3)
  decisions = [ctl.end_epoch(0.5) for _ in range(30)]
  events = [(i, d.learning_rate, d.release, d.stop) for i, d in enumerate(decisions) if d.release or d.stop]
  assert decisions[0].improved and not any(d.improved for d in decisions[1:])
  assert decisions[5].learning_rate == pytest.approx(1e-5) and decisions[6].learning_rate == pytest.approx(1e-6)
  assert events[0][:3] == (12, 1e-5, True)  # second cut -> release, LR back to 1e-5
  assert events[1][0] == 25 and events[1][3]  # two more cuts (epochs 19 and 25) with nothing left: stop
  assert ctl.released == 3


def test_early_stopping_counter_restarts_at_release():
  ctl = release.EpochController(initial_lr=1e-5, released=1, num_groups=3, early_stop=8, patience=2)
  stops = [ctl.end_epoch(m).stop for m in [0.1, 0.2] + [0.2] * 12]
  # cuts after 3 and 6 non-improving epochs -> release at epoch index 7 resets the counter; without the reset
  # the early stop would fire at index 9 (8 epochs without improvement)
  assert not any(stops[:10])
  restored = release.EpochController.from_state_dict(ctl.state_dict())
  assert restored == ctl
