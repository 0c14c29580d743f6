"""Why pruned sparse_e2e variants learn slowly: train a few steps on the synthetic tree, report loss, gradient
norms per part, and at the end how the kept sites change from token to token and how large the weights g are.

  PYTHONPATH=. python experiments/sparse_e2e/diagnose_pruning.py --steps=40 --top_p=0.8 --mask=random

--mask replaces the nucleus selection (inside the default masked-dense trunk) for a control: `nucleus` (the
model's own), `random` (each token its own random sites, keep fraction --fraction, independent of the
features) or `fixed` (the same random sites for every token). Same data order and initialisation in every run.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from affjax import systems
from affjax.data import pipeline, prepare, records as records_lib
from affjax.models import sparse_stages
from affjax.train import losses, optim, state as state_lib
from configs import sparse_e2e


def control_mask(mode: str, fraction: float):
  """A stand-in for `sparse_stages.nucleus_mask` that ignores α: random sites per token, or one fixed set."""
  def mask(alpha, p, valid=None):
    del p
    valid = jnp.ones(alpha.shape, bool) if valid is None else valid
    key = jax.random.key(alpha.shape[-1])  # one key per stage (site counts differ)
    shape = alpha.shape if mode == 'random' else alpha.shape[1:]
    return (jax.random.uniform(key, shape) < fraction) & valid
  return mask


def part(path) -> str:
  keys = [p.key for p in path]
  return f'{keys[0]}/{keys[1]}' if keys[0].endswith('trunk') else keys[0]


def selection_stats(model, variables, batch, top_p: float, capacity: float | None) -> list[str]:
  """Per trunk and stage: keep fraction, Jaccard overlap of the kept sites of consecutive tokens (and what
  independent random sets of that fraction would give), and the spread of g over the kept sites; `capacity`:
  the gather stages' truncation (None: masked dense)."""
  _, state = model.apply(variables, batch, train=False, mutable=['intermediates'],
                         capture_intermediates=lambda mdl, _: isinstance(mdl, sparse_stages.AdditiveScorer))
  b, t = batch['mask'].shape
  lines = []
  for trunk, valid in (('visual_trunk', batch['face_mask'] & batch['mask']), ('audio_trunk', batch['mask'])):
    valid = np.asarray(valid)
    for stage in range(3):
      alpha = state['intermediates'][trunk][f'scorer{stage}']['__call__'][0]
      keep = sparse_stages.nucleus_mask(alpha, top_p, alpha > 0)
      if capacity is not None:  # gather: the top ⌈capacity·H·W⌉ sites of the nucleus
        index, active = sparse_stages.top_k_slots(alpha, keep, sparse_stages.capacity(capacity, alpha.shape[1], 1))
        keep = jnp.zeros_like(keep).at[jnp.arange(len(keep))[:, None], index].set(active)
      g = np.asarray(sparse_stages.attention_weights(alpha, keep, 'renorm'))
      keep = np.asarray(keep).reshape(b, t, -1)
      q = keep[valid].mean()
      pairs = valid[:, 1:] & valid[:, :-1]
      jaccard = ((keep[:, 1:] & keep[:, :-1]).sum(-1) / np.maximum((keep[:, 1:] | keep[:, :-1]).sum(-1), 1))[pairs]
      kept = g.reshape(b, t, -1)[valid][keep[valid]]
      lines.append(f'  {trunk} stage {stage}: keep {q:.2f}, Jaccard(t, t+1) {jaccard.mean():.2f} (independent '
                   f'{q / (2 - q):.2f}); g on kept sites min {kept.min():.2f} median {np.median(kept):.2f} '
                   f'p99 {np.percentile(kept, 99):.2f} max {kept.max():.2f}')
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--top_p', type=float, default=0.8)
  parser.add_argument('--top_p_warmup_steps', type=int, default=0)
  parser.add_argument('--scma_grad', default='renorm')
  parser.add_argument('--sparse', type=int, default=1)
  parser.add_argument('--sparse_impl', default='masked_dense')
  parser.add_argument('--capacity', type=float, default=0.4)
  parser.add_argument('--mask', default='nucleus', choices=('nucleus', 'random', 'fixed'))
  parser.add_argument('--fraction', type=float, default=0.7)
  args = parser.parse_args()
  if args.mask != 'nucleus':
    sparse_stages.nucleus_mask = control_mask(args.mask, args.fraction)
  config = sparse_e2e.get_config()
  config.data.num_workers = 0
  config.train.num_steps = max(args.steps, config.optim.warmup_steps + 1)
  config.model.update(top_p=args.top_p, top_p_warmup_steps=args.top_p_warmup_steps, scma_grad=args.scma_grad,
                      sparse=bool(args.sparse), sparse_impl=args.sparse_impl, capacity=args.capacity)
  it = iter(pipeline.train_dataset(records_lib.open_records(prepare.input_dir(config), 'train'), config))
  batches = [jax.tree.map(jnp.asarray, next(it)) for _ in range(args.steps)]
  model = systems.build_model(config.model, config.compat)
  tx = optim.make_optimizer(config)
  variables, rng = state_lib.init_variables(model, config, jax.random.key(config.seed))
  params, stats, opt = variables['params'], variables['batch_stats'], tx.init(variables['params'])

  @jax.jit
  def step(params, stats, opt, batch, i):
    def loss_fn(p):
      out, upd = model.apply({'params': p, 'batch_stats': stats}, batch, train=True,
                             rngs={'dropout': jax.random.fold_in(rng, i)}, mutable=['batch_stats'])
      loss, aux = losses.model_loss(out, batch['labels'], batch['label_mask'], config.loss)
      return loss, (aux, upd)
    (loss, (aux, upd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    norms = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
      norms[part(path)] = norms.get(part(path), 0.0) + jnp.sum(leaf ** 2)
    return optax.apply_updates(params, updates), upd['batch_stats'], opt, loss, aux, jax.tree.map(jnp.sqrt, norms)

  print(f'mask={args.mask} top_p={args.top_p} top_p_warmup_steps={args.top_p_warmup_steps} '
        f'scma_grad={args.scma_grad} sparse={bool(args.sparse)} sparse_impl={args.sparse_impl} '
        f'capacity={args.capacity}', flush=True)
  start = time.perf_counter()
  for i, batch in enumerate(batches):
    params, stats, opt, loss, aux, norms = step(params, stats, opt, batch, i)
    if i % 5 == 4 or i == len(batches) - 1:
      print(f'step {i + 1:3d}: loss {float(loss):.3f}, CCC valence {float(aux["ccc_valence"]):+.3f} arousal '
            f'{float(aux["ccc_arousal"]):+.3f} ({time.perf_counter() - start:.0f} s)', flush=True)
  print('  gradient norms at the last step: ' + ', '.join(f'{k}: {float(v):.2f}' for k, v in sorted(norms.items())))
  if args.sparse:
    final_p = float(sparse_stages.anneal_from_one(args.top_p, args.top_p_warmup_steps, jnp.asarray(args.steps)))
    print('at init, last batch:')
    capacity = args.capacity if args.sparse_impl == 'gather' else None
    print('\n'.join(selection_stats(model, variables, batches[-1], final_p, capacity)))
    print(f'after {args.steps} steps, last batch:')
    print('\n'.join(selection_stats(model, {'params': params, 'batch_stats': stats}, batches[-1], final_p, capacity)))


if __name__ == '__main__':
  main()
