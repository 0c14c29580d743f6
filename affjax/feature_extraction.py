"""Feature caches of frozen backbones: run a config's backbones once over its records (`feature_cache`).

Per view (`config.data.view`): 'frames', one embedding per frame (the per-frame models' backbones); 'clips'
(RJCA), per frame the embeddings of the clip that ends at it (`RJCAModel.backbone_features`).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import optax

from affjax import models, parallel
from affjax.data import clips, feature_cache, pipeline, prepare
from affjax.train import state as state_lib

# the batch entries each view's backbones read
MODEL_INPUTS = {'frames': ('faces', 'audio', 'audio_offsets', 'mask'),
                'clips': ('faces', 'clip_audio', 'clip_audio_samples')}


def _view(config) -> str:
  return config.data.view


def _backbone_features(model, config) -> Callable:
  """(variables, batch) -> {part: [B, T, ...]} outputs of the model's backbones in inference mode."""
  if _view(config) == 'clips':
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
  model = models.build_model(config.model, config.compat)
  state = state_lib.initial_state(model, optax.identity(), config, parallel.make_mesh(), config.seed)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  extract = jax.jit(_backbone_features(model, config))
  inputs = lambda batch: {k: batch[k] for k in MODEL_INPUTS[_view(config)] if k in batch}
  shapes = jax.eval_shape(extract, variables, inputs(state_lib.example_batch(config, 1)))
  return (lambda batch: jax.device_get(extract(variables, inputs(batch))),
          {part: tuple(int(n) for n in s.shape[2:]) for part, s in shapes.items()})


def chunk_loader(config) -> Callable[[pipeline.Records], feature_cache.ChunkLoader]:
  """records -> the loader of one chunk's backbone inputs (no augmentation) for `config.data.view`."""
  data = config.data
  if _view(config) == 'clips':
    return lambda records: clips.ChunkClipLoader(clips.ClipWindowLoader(
        records=records, num_clips=1, image_size=data.image_size, audio_samples=clips.clip_audio_samples(config)))
  return lambda records: pipeline.WindowLoader(records=records, window=records.chunk_size, image_size=data.image_size,
                                               audio_window=data.audio_window, min_fps=data.min_fps,
                                               integer_fps=config.compat.integer_fps)


def build_cache(config, out: str, batch_chunks: int = 8):
  """Builds (once) the feature cache of `config`'s backbones under `out`; returns its dataset directory,
  the value for `config.data.features_dir`."""
  if config.data.features_dir:
    raise ValueError(f'config.data.features_dir={config.data.features_dir!r}: a feature cache is built from the '
                     'frame records; leave it empty')
  extract, shapes = make_extractor(config)
  return feature_cache.build(prepare.records_dir(config), out, shapes=shapes, view=_view(config),
                             features=feature_cache.window_features(extract, chunk_loader(config), batch_chunks))
