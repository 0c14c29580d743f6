"""Dense vs sparse (masked dense) vs sparse (gather) sparse_e2e: feature-extractor MACs and measured step time.

  PYTHONPATH=. python tools/bench_sparse.py --variants=dense,masked_dense@0.8,gather@0.8/0.4 \
      --out=experiments/sparse_e2e/bench.json

A variant is `dense`, `masked_dense@P` or `gather@P/K` (top_p P, capacity K). Each variant's jit train step
(forward, backward, Adam update) runs on one device on random inputs of the config's shapes: warm-up steps,
then the median of --repeats timed steps; the dense variant is the baseline of the same run. MACs are the
trunks' per token (face + mel patch), from `sparse_stages.trunk_macs`, at the config's width and at the spec's 64.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax
import numpy as np

from affjax import models, parallel
from affjax.data.views import tokens
from affjax.models import sparse_stages
from affjax.models.audio import token_mel
from affjax.train import optim, state as state_lib, step as step_lib
from configs import sparse_e2e


def parse_variant(spec: str) -> dict:
  if spec == 'dense':
    return dict(sparse=False, sparse_impl='masked_dense')
  impl, _, levels = spec.partition('@')
  if impl not in sparse_stages.SPARSE_IMPLS or not levels:
    raise ValueError(f'variant {spec!r}: expected dense, masked_dense@P or gather@P/K')
  p, _, k = levels.partition('/')
  return dict(sparse=True, sparse_impl=impl, top_p=float(p), top_p_warmup_steps=0,  # time the target top_p
              **({'capacity': float(k)} if k else {}))


def feature_macs(model_cfg, width: int, mlp_hidden: int) -> float:
  """Per-token MACs of both trunks: what the variant computes (masked dense computes every site)."""
  total = 0.0
  for shape in ((48, 48, 3), (token_mel.N_MELS, token_mel.PATCH_FRAMES, 1)):
    keep = None
    if model_cfg.sparse:
      h, w = shape[0] // 2, shape[1] // 2
      keep = tuple(1.0 if model_cfg.sparse_impl == 'masked_dense' else
                   sparse_stages.capacity(model_cfg.capacity, h >> s, w >> s) / ((h >> s) * (w >> s)) for s in range(3))
    total += sparse_stages.trunk_macs(shape, width, mlp_hidden, model_cfg.d_model, keep)['total']
  return total


def random_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  b = state_lib.example_batch(config, batch_size)
  b['faces'] = rng.integers(0, 256, b['faces'].shape).astype(np.uint8)
  b['audio'] = rng.normal(size=b['audio'].shape).astype(np.float32)
  t = config.data.window
  starts = tokens.patch_starts(np.arange(t), config.model.token_rate_hz)
  b['audio_offsets'] = np.tile((starts - starts[0]).astype(np.int32), (batch_size, 1))
  b.update(face_mask=b['mask'].copy(), label_mask=b['mask'].copy(),
           labels=rng.uniform(-1, 1, (batch_size, t, 2)).astype(np.float32))
  return b


def time_variant(config, batch, repeats: int, warmup: int) -> float:
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
  model = models.build_model(config.model, config.compat)
  tx = optim.make_optimizer(config)
  state = state_lib.initial_state(model, tx, config, mesh, config.seed)
  train_step = step_lib.make_train_step(model, tx, config)
  times = []
  with jax.set_mesh(mesh):
    acc = jax.device_put(step_lib.zero_accumulator(), parallel.replicated(mesh))
    batch = parallel.to_global(batch, mesh)
    for i in range(warmup + repeats):
      t = time.perf_counter()
      state, acc = train_step(state, acc, batch)
      jax.block_until_ready(acc)
      if i >= warmup:
        times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--variants', default='dense,masked_dense@0.8,masked_dense@0.5,gather@0.8/0.6,gather@0.8/0.4,'
                                             'gather@0.5/0.2')
  parser.add_argument('--config_arg', default='', help='get_config argument of configs/sparse_e2e.py')
  parser.add_argument('--width', type=int, default=0, help='trunk width (0: the config\'s)')
  parser.add_argument('--batch_size', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  rows = []
  for spec in args.variants.split(','):
    config = sparse_e2e.get_config(args.config_arg)
    config.model.update(parse_variant(spec))
    if args.width:
      config.model.update(width=args.width, mlp_hidden=16 * args.width)
    batch = random_batch(config, args.batch_size)
    step_s = time_variant(config, batch, args.repeats, args.warmup)
    tokens_per_s = args.batch_size * config.data.window / step_s
    rows.append(dict(variant=spec, step_s=step_s, tokens_per_s=tokens_per_s,
                     frames_per_s_at_30fps=tokens_per_s * 30 / config.model.token_rate_hz,
                     gmac_per_token=feature_macs(config.model, config.model.width, config.model.mlp_hidden) / 1e9,
                     gmac_per_token_width64=feature_macs(config.model, 64, 1024) / 1e9))
    print(json.dumps(rows[-1]), flush=True)
  result = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
                batch_size=args.batch_size, config_arg=args.config_arg, width=config.model.width,
                repeats=args.repeats, rows=rows)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
  main()
