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
            mse_weight: float = 0.0, per_window: bool = False, ccc_pred: jnp.ndarray | None = None
            ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """`sum_d w_d (1 - CCC_d) + mse_weight * mean_d MSE_d` for pred/target [B,T,2] (valence, arousal).

  CCC over every masked-in frame of the batch, or with `per_window` the mean of the windows' CCCs (LFAN).
  `ccc_pred` (default `pred`) is what the CCC terms score; only the reference-bug compat mode differs.
  """
  ccc_pred = pred if ccc_pred is None else ccc_pred
  ccc_fn = window_mean_ccc if per_window else masked_ccc
  ccc = jnp.stack([ccc_fn(ccc_pred[..., d], target[..., d], mask) for d in range(2)])
  mse = jnp.stack([masked_mse(pred[..., d], target[..., d], mask) for d in range(2)])
  loss = jnp.dot(jnp.asarray(ccc_weights, jnp.float32), 1.0 - ccc) + mse_weight * mse.mean()
  return loss, dict(ccc_valence=ccc[0], ccc_arousal=ccc[1], mse=mse.mean())


# Discretised auxiliary target (spec rnn_attn 3): 8 angle sectors x 3 radius rings, and the reference's
# class weights for the cross-entropy.
AUX_CLASS_WEIGHTS = (1.28, 1.06, 0.81, 0.89, 0.81, 0.81, 0.81, 0.81, 1.28, 1.28, 1.26, 1.28,
                     0.81, 0.81, 0.81, 0.81, 1.28, 1.28, 1.28, 1.28, 0.81, 0.83, 0.81, 0.83)
_PI = 3.1416  # the reference's pi


def _bucket(x: jnp.ndarray, edges: jnp.ndarray, num: int) -> jnp.ndarray:
  """#{i : edges_i < x} - 1 (right-closed bins), clamped into [0, num - 1] (reference bug 12)."""
  return jnp.clip(jnp.sum(edges < x[..., None], axis=-1) - 1, 0, num - 1)


def discretise_va(labels: jnp.ndarray) -> jnp.ndarray:
  """[..., 2] (valence, arousal) -> class in [0, 24): sector of atan2(a, v) + 8 x ring of the radius."""
  v, a = labels[..., 0].astype(jnp.float32), labels[..., 1].astype(jnp.float32)
  sector = _bucket(jnp.arctan2(a, v), jnp.linspace(-_PI, _PI, 9), 8)
  ring = _bucket(jnp.sqrt(v * v + a * a), jnp.linspace(0.0, jnp.sqrt(2.0), 4), 3)
  return sector + 8 * ring


def weighted_cross_entropy(logits: jnp.ndarray, classes: jnp.ndarray, mask: jnp.ndarray,
                           class_weights=AUX_CLASS_WEIGHTS) -> jnp.ndarray:
  """PyTorch's weighted mean cross-entropy over the masked frames: sum w_y ce / sum w_y; [B,T,C] -> scalar."""
  w = jnp.asarray(class_weights, jnp.float32)[classes] * mask.astype(jnp.float32)
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(log_p, classes[..., None], axis=-1)[..., 0]
  return (w * ce).sum() / jnp.maximum(w.sum(), 1e-12)


def model_loss(out: dict[str, jnp.ndarray], labels: jnp.ndarray, mask: jnp.ndarray, loss_cfg,
               compat_arousal_ccc_on_cat_logit: bool = False) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The training loss of a model's outputs {'va': [B,T,2], 'cat': [B,T,24] (auxiliary head, optional)}:
  `va_loss` + `loss_cfg.aux_weight` x the weighted cross-entropy of 'cat' against the discretised labels.

  `compat_arousal_ccc_on_cat_logit` reproduces reference bug 1: the arousal CCC scores logit 1 of 'cat'.
  """
  va = out['va']
  ccc_pred = va.at[..., 1].set(out['cat'][..., 1]) if compat_arousal_ccc_on_cat_logit else None
  loss, aux = va_loss(va, labels, mask, ccc_weights=tuple(loss_cfg.ccc_weights), mse_weight=loss_cfg.mse_weight,
                      per_window=loss_cfg.per_window, ccc_pred=ccc_pred)
  aux['aux_ce'] = jnp.zeros((), jnp.float32)
  if loss_cfg.aux_weight:
    aux['aux_ce'] = weighted_cross_entropy(out['cat'], discretise_va(labels), mask)
    loss = loss + loss_cfg.aux_weight * aux['aux_ce']
  return loss, aux
