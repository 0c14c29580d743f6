"""Training losses over masked per-frame predictions (float32)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

CCC_EPS = 1e-8


def masked_ccc(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """CCC with population (1/N) moments over the frames where `mask` is true; [B,T] -> scalar.

  `2 cov / (var_p + var_t + (mean_p - mean_t)^2 + eps)`; under jit over a sharded batch the sums are global.
  """
  pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
  w = mask.astype(jnp.float32)
  n = jnp.maximum(w.sum(), 1.0)
  mp, mt = (w * pred).sum() / n, (w * target).sum() / n
  dp, dt = (pred - mp) * w, (target - mt) * w
  cov = (dp * dt).sum() / n
  var_p, var_t = (dp * dp).sum() / n, (dt * dt).sum() / n
  return 2.0 * cov / (var_p + var_t + (mp - mt) ** 2 + CCC_EPS)


def masked_mse(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  w = mask.astype(jnp.float32)
  return (w * (pred.astype(jnp.float32) - target) ** 2).sum() / jnp.maximum(w.sum(), 1.0)


def window_mean_ccc(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """`masked_ccc` of each window (row) of [B,T], averaged over the windows with at least 2 masked-in frames
  (0 if there is none); [B,T] -> scalar."""
  ccc = jax.vmap(masked_ccc)(pred, target, mask)
  counted = (mask.sum(axis=1) >= 2).astype(jnp.float32)
  return (ccc * counted).sum() / jnp.maximum(counted.sum(), 1.0)


def va_loss(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray, *, ccc_weights=(0.5, 0.5),
            mse_weight: float = 0.0, per_window: bool = False) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """`sum_d w_d (1 - CCC_d) + mse_weight * mean_d MSE_d` for pred/target [B,T,2] (valence, arousal).

  CCC over every masked-in frame of the batch, or with `per_window` the mean of the windows' CCCs (LFAN).
  """
  ccc_fn = window_mean_ccc if per_window else masked_ccc
  ccc = jnp.stack([ccc_fn(pred[..., d], target[..., d], mask) for d in range(2)])
  mse = jnp.stack([masked_mse(pred[..., d], target[..., d], mask) for d in range(2)])
  loss = jnp.dot(jnp.asarray(ccc_weights, jnp.float32), 1.0 - ccc) + mse_weight * mse.mean()
  return loss, dict(ccc_valence=ccc[0], ccc_arousal=ccc[1], mse=mse.mean())
