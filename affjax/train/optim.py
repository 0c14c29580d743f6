"""AdamW with linear warm-up and cosine decay, optionally with warm restarts (stepped per batch), and frozen
model parts held by the optimiser's mask (frozen for the run, or until a fine-tuning stage)."""
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


def _adamw(optim, learning_rate) -> optax.GradientTransformation:
  return optax.adamw(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)


def run_schedule(config) -> optax.Schedule:
  """The learning rate of the trained parameters at each step of the run: `learning_rate_schedule` over the
  run, or with two-stage fine-tuning (`train.unfreeze_step > 0`) over the first stage, then the constant
  `optim.finetune_learning_rate`."""
  optim, unfreeze = config.optim, config.train.unfreeze_step
  if not unfreeze:
    return learning_rate_schedule(optim, config.train.num_steps)
  return optax.join_schedules([learning_rate_schedule(optim, unfreeze),
                               optax.constant_schedule(optim.finetune_learning_rate)], [unfreeze])


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay on every trained parameter) at `run_schedule`, with global-norm clipping
  if optim.grad_clip_norm > 0.

  The model parts in `model.frozen` (e.g. 'visual') are held fixed through the optimiser's mask: for the
  whole run, or with `train.unfreeze_step > 0` until that step; from then on they train at
  `optim.finetune_learning_rate` with Adam moments that start there.
  """
  optim, frozen, unfreeze = config.optim, tuple(config.model.get('frozen', ())), config.train.unfreeze_step
  adamw = lambda lr: optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
  tx = adamw(run_schedule(config))
  if frozen:
    held = (optax.conditionally_mask(adamw(optim.finetune_learning_rate), lambda count: count >= unfreeze)
            if unfreeze else optax.set_to_zero())
    tx = optax.multi_transform({'train': tx, 'frozen': held},
                               lambda params: {k: 'frozen' if k in frozen else 'train' for k in params})
  if optim.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  return tx
