"""Training losses over masked per-frame predictions (float32)."""
from __future__ import annotations

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


def va_loss(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray, *, ccc_weights=(0.5, 0.5),
            mse_weight: float = 0.0) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """`sum_d w_d (1 - CCC_d) + mse_weight * mean_d MSE_d` for pred/target [B,T,2] (valence, arousal)."""
  ccc = jnp.stack([masked_ccc(pred[..., d], target[..., d], mask) for d in range(2)])
  mse = jnp.stack([masked_mse(pred[..., d], target[..., d], mask) for d in range(2)])
  loss = jnp.dot(jnp.asarray(ccc_weights, jnp.float32), 1.0 - ccc) + mse_weight * mse.mean()
  return loss, dict(ccc_valence=ccc[0], ccc_arousal=ccc[1], mse=mse.mean())
