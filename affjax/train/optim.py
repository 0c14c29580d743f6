"""AdamW (or Adam with coupled L2 decay) with linear warm-up and cosine decay, optionally with warm restarts
(stepped per batch), and frozen parameter groups."""
from __future__ import annotations

import jax
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

  The learning rate follows `learning_rate_schedule`, or with `optim.host_learning_rate` it is a hyperparameter in
  the optimiser state that the host sets between steps (`set_learning_rate`; epoch-level plateau recipes).
  `param_labels` (`params -> 'train' | 'frozen'` per leaf, optional): frozen parameters get zero updates
  (no weight decay, no optimiser state).
  """
  def build(learning_rate):
    if optim.get('coupled_weight_decay', False):
      tx = optax.chain(optax.add_decayed_weights(optim.weight_decay),
                       optax.adam(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps))
    else:
      tx = optax.adamw(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
    if optim.grad_clip_norm > 0:
      tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
    if param_labels is not None:
      tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, param_labels)
    return tx

  if optim.get('host_learning_rate', False):
    return optax.inject_hyperparams(build)(learning_rate=optim.learning_rate)
  return build(learning_rate_schedule(optim, num_steps))


def set_learning_rate(opt_state, learning_rate: float):
  """`opt_state` of a `host_learning_rate` optimiser with its learning rate replaced (same shape and sharding,
  so the train step does not recompile)."""
  old = opt_state.hyperparams['learning_rate']
  new = jax.device_put(jnp.asarray(learning_rate, old.dtype), old.sharding)
  return opt_state._replace(hyperparams={**opt_state.hyperparams, 'learning_rate': new})
