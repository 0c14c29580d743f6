"""Feature caches of frozen backbones: run a config's backbones once over its records (`feature_cache`).

Per view (`config.data.view`, `affjax.data.views`): the frame view caches one embedding per frame (the per-frame
models' backbones); the clip view (RJCA) per frame the embeddings of the clip that ends at it (the model's
`backbone_features`).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import optax

from affjax import parallel, systems
from affjax.data import feature_cache, prepare, records as records_lib, views
from affjax.train import state as state_lib


def _backbone_features(model, config) -> Callable:
  """(variables, batch) -> {part: [B, T, ...]} outputs of the model's backbones in inference mode: its
  `backbone_features` method where it has one, else the outputs of its `model.modalities` submodules."""
  if hasattr(model, 'backbone_features'):
    return lambda variables, batch: model.apply(variables, batch, method='backbone_features')
  parts = tuple(config.model.modalities)
  is_backbone = lambda module, method: method == '__call__' and len(module.scope.path) == 1 and module.name in parts

  def features(variables, batch):
    b, t = batch['mask'].shape
    _, captured = model.apply(variables, batch, train=False, capture_intermediates=is_backbone,
                              mutable=['intermediates'])
    return {part: captured['intermediates'][part]['__call__'][0].reshape(b, t, -1) for part in parts}

  return features


def make_extractor(config) -> tuple[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                                    dict[str, tuple[int, ...]]]:
  """(batch of chunk inputs -> {part: [B, T, ...]} float32 features of the config's backbones in inference mode,
  {part: per-frame shape}). The backbones carry `model.pretrained`'s weights, or the initialisation of
  `config.seed` that a frozen inline run starts from too."""
  model = systems.build_model(config.model, config.compat)
  state = state_lib.initial_state(model, optax.identity(), config, parallel.make_mesh(), config.seed)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  extract = jax.jit(_backbone_features(model, config))
  inputs = lambda batch: {k: batch[k] for k in views.of(config).backbone_inputs if k in batch}
  shapes = jax.eval_shape(extract, variables, inputs(state_lib.example_batch(config, 1)))
  return (lambda batch: jax.device_get(extract(variables, inputs(batch))),
          {part: tuple(int(n) for n in s.shape[2:]) for part, s in shapes.items()})


def chunk_loader(config) -> Callable[[records_lib.Records], feature_cache.ChunkLoader]:
  """records -> the loader of one chunk's backbone inputs (no augmentation) for `config.data.view`."""
  view = views.of(config)
  if view.chunk_loader is None:
    raise ValueError(f'config.data.view={view.name!r} has no feature cache: cache the frame or clip view\'s backbones')
  return lambda records: view.chunk_loader(records, config)


def build_cache(config, out: str, batch_chunks: int = 8):
  """Builds (once) the feature cache of `config`'s backbones under `out`; returns its dataset directory,
  the value for `config.data.features_dir`."""
  if config.data.features_dir:
    raise ValueError(f'config.data.features_dir={config.data.features_dir!r}: a feature cache is built from the '
                     'frame records; leave it empty')
  loader = chunk_loader(config)
  extract, shapes = make_extractor(config)
  return feature_cache.build(prepare.records_dir(config), out, shapes=shapes, view=views.of(config).name,
                             features=feature_cache.window_features(extract, loader, batch_chunks))
