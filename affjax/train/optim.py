"""AdamW with linear warm-up and cosine decay, optionally with warm restarts (stepped per batch), or with an
epoch step decay (`optim.schedule = 'epoch_step'`, RJCA)."""
from __future__ import annotations

import jax.numpy as jnp
import optax


SCHEDULES = ('cosine', 'epoch_step')


def epoch_step_schedule(optim) -> optax.Schedule:
  """`lr` for epochs e <= `decay_after_epochs`, then `lr * decay_factor^floor((e - decay_after_epochs) /
  decay_every_epochs)`, with e = step // `steps_per_epoch` (RJCA's decay without the reference's 10x jump)."""
  lr, per_epoch = optim.learning_rate, optim.steps_per_epoch
  after, every, factor = optim.decay_after_epochs, optim.decay_every_epochs, optim.decay_factor

  def schedule(step):
    epoch = jnp.floor(jnp.asarray(step, jnp.float32) / per_epoch)
    return lr * factor ** jnp.maximum(jnp.floor((epoch - after) / every), 0.0)

  return schedule


def learning_rate_schedule(optim, num_steps: int) -> optax.Schedule:
  """`epoch_step_schedule` if optim.schedule is 'epoch_step'; by default linear warm-up over `warmup_steps`,
  then `lr (1 + cos(pi (t mod T0) / T0)) / 2` where t counts steps after warm-up and T0 = `restart_period` (0: one period spanning the rest of the run)."""
  schedule_name = optim.get('schedule', 'cosine')
  if schedule_name not in SCHEDULES:
    raise ValueError(f'config.optim.schedule={schedule_name!r} is not one of {list(SCHEDULES)}')
  if schedule_name == 'epoch_step':
    if optim.steps_per_epoch <= 0:
      raise ValueError(f'config.optim.steps_per_epoch={optim.steps_per_epoch} must be > 0 for the epoch_step schedule')
    return epoch_step_schedule(optim)
  period = optim.restart_period or max(num_steps - optim.warmup_steps, 1)
  lr, warmup = optim.learning_rate, optim.warmup_steps

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    t = jnp.maximum(step - warmup, 0.0)
    cosine = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.mod(t, period) / period))
    return jnp.where(step < warmup, lr * (step + 1) / max(warmup, 1), cosine)

  return schedule


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay on every parameter), with global-norm clipping if grad_clip_norm > 0."""
  tx = optax.adamw(learning_rate_schedule(optim, num_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                   weight_decay=optim.weight_decay)
  if optim.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  return tx
