"""AdamW (or Adam with coupled L2 decay) with linear warm-up and cosine decay, optionally with warm restarts
(stepped per batch), an epoch step decay (`optim.schedule = 'epoch_step'`, RJCA) or a rate the host sets per
epoch, and frozen parameters held by the optimiser's mask (for the run, or until a fine-tuning stage)."""
from __future__ import annotations

import jax
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
  schedule_name = optim.schedule
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


def run_schedule(config) -> optax.Schedule:
  """The learning rate of the trained parameters at each step of the run: `learning_rate_schedule` over the
  run, or with two-stage fine-tuning (`train.unfreeze_step > 0`) over the first stage, then the constant
  `optim.finetune_learning_rate`."""
  optim, unfreeze = config.optim, config.train.unfreeze_step
  if not unfreeze:
    return learning_rate_schedule(optim, config.train.num_steps)
  return optax.join_schedules([learning_rate_schedule(optim, unfreeze),
                               optax.constant_schedule(optim.finetune_learning_rate)], [unfreeze])


def make_optimizer(config, param_labels=None) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay on every trained parameter), or with `optim.coupled_weight_decay` Adam on the
  gradient plus `weight_decay * param` (PyTorch `Adam(weight_decay=...)`); global-norm clipping if
  optim.grad_clip_norm > 0.

  The learning rate follows `run_schedule`, or with `optim.host_learning_rate` it is a hyperparameter in the
  optimiser state that the host sets between steps (`set_learning_rate`; epoch-level plateau recipes).
  Parameters that `param_labels` (`params -> 'train' | 'frozen'` per leaf or per subtree; by default the
  top-level parts named in `model.frozen`) labels 'frozen' are held fixed through the optimiser's mask (no
  weight decay either): for the whole run, or with `train.unfreeze_step > 0` until that step; from then on
  they train at `optim.finetune_learning_rate` with Adam moments that start there.
  """
  optim, unfreeze = config.optim, config.train.unfreeze_step
  frozen = tuple(config.model.frozen)
  if param_labels is None and frozen:
    param_labels = lambda params: {k: 'frozen' if k in frozen else 'train' for k in params}

  def adam(learning_rate):
    if optim.coupled_weight_decay:
      return optax.chain(optax.add_decayed_weights(optim.weight_decay),
                         optax.adam(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps))
    return optax.adamw(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)

  def build(learning_rate):
    tx = adam(learning_rate)
    if param_labels is not None:
      held = (optax.conditionally_mask(adam(optim.finetune_learning_rate), lambda count: count >= unfreeze)
              if unfreeze else optax.set_to_zero())
      tx = optax.multi_transform({'train': tx, 'frozen': held}, param_labels)
    if optim.grad_clip_norm > 0:
      tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
    return tx

  if optim.host_learning_rate:
    return optax.inject_hyperparams(build)(learning_rate=optim.learning_rate)
  return build(run_schedule(config))


def set_learning_rate(opt_state, learning_rate: float):
  """`opt_state` of a `host_learning_rate` optimiser with its learning rate replaced (same shape and sharding,
  so the train step does not recompile)."""
  old = opt_state.hyperparams['learning_rate']
  new = jax.device_put(jnp.asarray(learning_rate, old.dtype), old.sharding)
  return opt_state._replace(hyperparams={**opt_state.hyperparams, 'learning_rate': new})
