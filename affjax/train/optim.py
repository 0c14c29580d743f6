"""AdamW (or Adam with coupled L2 decay) with linear warm-up and cosine decay, optionally with warm restarts
(stepped per batch), and frozen parameter groups."""
from __future__ import annotations

import jax.numpy as jnp
import optax


def learning_rate_schedule(optim, num_steps: int) -> optax.Schedule:
  """Linear warm-up over `warmup_steps`, then `lr (1 + cos(pi (t mod T0) / T0)) / 2` where t counts steps
  after warm-up and T0 = `restart_period` (0: one period spanning the rest of the run)."""
  period = optim.restart_period or max(num_steps - optim.warmup_steps, 1)
  lr, warmup = optim.learning_rate, optim.warmup_steps

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    t = jnp.maximum(step - warmup, 0.0)
    cosine = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.mod(t, period) / period))
    return jnp.where(step < warmup, lr * (step + 1) / max(warmup, 1), cosine)

  return schedule


def make_optimizer(optim, num_steps: int, param_labels=None) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay on every parameter), or with `optim.coupled_weight_decay` Adam on the gradient
  plus `weight_decay * param` (PyTorch `Adam(weight_decay=...)`); global-norm clipping if grad_clip_norm > 0.

  `param_labels` (`params -> 'train' | 'frozen'` per leaf, optional): frozen parameters get zero updates
  (no weight decay, no optimiser state).
  """
  schedule = learning_rate_schedule(optim, num_steps)
  if optim.get('coupled_weight_decay', False):
    tx = optax.chain(optax.add_decayed_weights(optim.weight_decay),
                     optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps))
  else:
    tx = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
  if optim.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  if param_labels is not None:
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, param_labels)
  return tx
