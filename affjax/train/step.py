"""The jit-compiled train and eval steps; they run on global arrays sharded along the mesh's 'data' axis."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from affjax.train import losses

ACCUMULATED = ('loss', 'ccc_valence', 'ccc_arousal', 'mse', 'aux_ce', 'grad_norm')


def loss_mask(batch, require_face: bool) -> jax.Array:
  """Frames that count in the loss: annotated (not -5, row present, not padding), with a face if required."""
  mask = batch['label_mask']
  return mask & batch['face_mask'] if require_face else mask


def zero_accumulator() -> dict[str, jax.Array]:
  """Sums of the step metrics since the last log, the number of steps, and non-finite loss steps."""
  acc = {k: jnp.zeros((), jnp.float32) for k in ACCUMULATED}
  return dict(acc, steps=jnp.zeros((), jnp.int32), nonfinite=jnp.zeros((), jnp.int32))


def make_train_step(model, tx: optax.GradientTransformation, config):
  """(state, accumulator, batch) -> (state, accumulator); state and accumulator are donated."""
  loss_cfg, require_face = config.loss, config.data.require_face
  compat_arousal = config.compat.arousal_ccc_on_cat_logit

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(state, acc, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      out, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, batch, train=True,
                                 rngs={'dropout': rng}, mutable=['batch_stats'])
      loss, aux = losses.model_loss(out, batch['labels'], loss_mask(batch, require_face), loss_cfg, compat_arousal)
      return loss, (aux, updates)

    (loss, (aux, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
                          batch_stats=updates.get('batch_stats', state.batch_stats), opt_state=opt_state)
    metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads))
    acc = dict({k: acc[k] + metrics[k] for k in ACCUMULATED}, steps=acc['steps'] + 1,
               nonfinite=acc['nonfinite'] + (~jnp.isfinite(loss)).astype(jnp.int32))
    return state, acc

  return train_step


def make_eval_step(model):
  """(state, batch) -> per-frame predictions [B,T,2] (float32, BatchNorm running averages, no dropout)."""

  @jax.jit
  def eval_step(state, batch):
    return model.apply({'params': state.params, 'batch_stats': state.batch_stats}, batch, train=False)['va']

  return eval_step
