"""Losses, the ABAW metric and the learning-rate schedule against independent float64 formulas."""
import ml_collections
import numpy as np
import pytest

from affjax.train import losses, metrics, optim


def ccc_via_pearson(x, y):
  """CCC = 2 rho sx sy / (sx^2 + sy^2 + (mx - my)^2), from numpy's correlation (population std)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  rho = np.corrcoef(x, y)[0, 1]
  sx, sy = x.std(), y.std()
  return 2 * rho * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean())**2)


def test_metric_ccc_matches_pearson_form():
  rng = np.random.default_rng(0)
  x = rng.normal(size=1000)
  y = 0.6 * x + rng.normal(scale=0.5, size=1000) + 0.3
  assert metrics.ccc(x, y) == pytest.approx(ccc_via_pearson(x, y), rel=1e-12)
  assert metrics.ccc(x, x) == pytest.approx(1.0)
  centred = x - x.mean()
  assert metrics.ccc(centred, -centred) == pytest.approx(-1.0)


def test_va_metrics_mean_of_both_dimensions():
  rng = np.random.default_rng(1)
  target = rng.uniform(-1, 1, size=(500, 2))
  pred = target + rng.normal(scale=[0.1, 0.5], size=(500, 2))
  m = metrics.va_metrics(pred, target)
  assert m['ccc_valence'] == pytest.approx(ccc_via_pearson(pred[:, 0], target[:, 0]))
  assert m['ccc_arousal'] == pytest.approx(ccc_via_pearson(pred[:, 1], target[:, 1]))
  assert m['ccc_mean'] == pytest.approx((m['ccc_valence'] + m['ccc_arousal']) / 2)
  assert m['num_frames'] == 500
  with pytest.raises(ValueError, match='no annotated frame'):
    metrics.ccc(np.zeros(0), np.zeros(0))


def test_masked_ccc_equals_float64_ccc_of_the_valid_frames():
  rng = np.random.default_rng(2)
  pred = rng.normal(size=(4, 16)).astype(np.float32)
  target = (0.5 * pred + rng.normal(scale=0.3, size=(4, 16))).astype(np.float32)
  mask = rng.random((4, 16)) < 0.7
  pred_garbage = np.where(mask, pred, 1e3).astype(np.float32)  # masked frames must not count
  got = float(losses.masked_ccc(pred_garbage, target, mask))
  assert got == pytest.approx(ccc_via_pearson(pred[mask], target[mask]), rel=1e-5)


def test_va_loss_combines_weighted_ccc_and_mse():
  rng = np.random.default_rng(3)
  target = rng.uniform(-1, 1, size=(2, 8, 2)).astype(np.float32)
  pred = (target + rng.normal(scale=0.3, size=target.shape)).astype(np.float32)
  mask = np.ones((2, 8), bool)
  mask[1, 5:] = False
  loss, aux = losses.va_loss(pred, target, mask, ccc_weights=(0.75, 0.25), mse_weight=0.5)
  p, t = pred[mask], target[mask]
  cv, ca = ccc_via_pearson(p[:, 0], t[:, 0]), ccc_via_pearson(p[:, 1], t[:, 1])
  mse = ((p - t) ** 2).mean()
  assert float(loss) == pytest.approx(0.75 * (1 - cv) + 0.25 * (1 - ca) + 0.5 * mse, rel=1e-5)
  assert float(aux['ccc_arousal']) == pytest.approx(ca, rel=1e-5)


def test_schedule_warmup_then_cosine_with_restarts():
  cfg = ml_collections.ConfigDict(dict(schedule='cosine', learning_rate=1e-3, warmup_steps=10, restart_period=100))
  schedule = optim.learning_rate_schedule(cfg, num_steps=500)
  assert float(schedule(0)) == pytest.approx(1e-4)
  assert float(schedule(9)) == pytest.approx(1e-3)
  for step in (10, 35, 60, 109, 110, 250):
    t = (step - 10) % 100
    assert float(schedule(step)) == pytest.approx(1e-3 * (1 + np.cos(np.pi * t / 100)) / 2, rel=1e-5, abs=1e-9)
  cfg.restart_period = 0  # one cosine over the rest of the run
  schedule = optim.learning_rate_schedule(cfg, num_steps=110)
  assert float(schedule(60)) == pytest.approx(0.5e-3, rel=1e-5)
