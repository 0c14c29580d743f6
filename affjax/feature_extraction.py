"""Feature caches of frozen backbones: run a config's backbones once over its records (`feature_cache`)."""
from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import optax

from affjax import models, parallel
from affjax.data import feature_cache, prepare
from affjax.train import state as state_lib

MODEL_INPUTS = ('faces', 'audio', 'audio_offsets', 'mask')


def make_extractor(config) -> tuple[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], dict[str, int]]:
  """(batch of frame windows -> {part: [B, T, F]} features of the config's backbones in inference mode,
  {part: F}). The backbones carry `model.pretrained`'s weights, or the initialisation of `config.seed` that
  a frozen inline run starts from too."""
  model = models.build_model(config.model)
  state = state_lib.initial_state(model, optax.identity(), config, parallel.make_mesh(), config.seed)
  parts = tuple(config.model.modalities)
  is_backbone = lambda module, method: method == '__call__' and len(module.scope.path) == 1 and module.name in parts

  @jax.jit
  def extract(batch):
    b, t = batch['mask'].shape
    _, captured = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, batch, train=False,
                              capture_intermediates=is_backbone, mutable=['intermediates'])
    return {part: captured['intermediates'][part]['__call__'][0].reshape(b, t, -1) for part in parts}

  inputs = lambda batch: {k: batch[k] for k in MODEL_INPUTS if k in batch}
  shapes = jax.eval_shape(extract, inputs(state_lib.example_batch(config, 1)))
  return (lambda batch: jax.device_get(extract(inputs(batch)))), {p: int(s.shape[-1]) for p, s in shapes.items()}


def build_cache(config, out: str, batch_chunks: int = 8):
  """Builds (once) the feature cache of `config`'s backbones under `out`; returns its dataset directory,
  the value for `config.data.features_dir`."""
  extract, widths = make_extractor(config)
  data = config.data
  loader_kwargs = dict(image_size=data.image_size, audio_window=data.audio_window, min_fps=data.min_fps,
                       integer_fps=config.compat.get('integer_fps', False))
  return feature_cache.build(prepare.records_dir(config), out, widths=widths,
                             features=feature_cache.window_features(extract, loader_kwargs, batch_chunks))
