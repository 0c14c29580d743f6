"""The feature cache: training the fusion from cached frozen-backbone features = running them inline."""
import json

import jax
import numpy as np
import pytest

from affjax import feature_extraction
from affjax.data import pipeline, prepare
from affjax.train import loop
from configs import cross_attn


def train_losses(workdir) -> list[float]:
  lines = (workdir / 'scalars.jsonl').read_text().splitlines()
  return [row['train/loss'] for row in map(json.loads, lines) if 'train/loss' in row]


def test_training_from_the_cache_follows_the_inline_frozen_loss_curve(tiny_tree, tmp_path):
  config = cross_attn.get_config('smoke,audio,frozen')
  config.data.update(manual_dir=str(tiny_tree), records_dir=str(tmp_path / 'records'), test_list='va_test_set.txt')
  config.model.audio_backbone = 'emo18'
  config.train.update(num_steps=4, log_every=1, eval_every=4, checkpoint_every=4)
  inline = loop.train_and_evaluate(config, tmp_path / 'inline')

  features_dir = feature_extraction.build_cache(config, str(tmp_path / 'features'), batch_chunks=3)
  frames = pipeline.open_records(prepare.records_dir(config), 'train')
  cache = pipeline.open_records(str(features_dir), 'train')
  assert cache.features == {'audio': 64} and cache.videos == frames.videos
  assert len(cache.source) == len(frames.source)
  np.testing.assert_array_equal(cache.source[1]['labels'], frames.source[1]['labels'])

  config.data.features_dir = str(features_dir)
  cached = loop.train_and_evaluate(config, tmp_path / 'cached')
  losses = train_losses(tmp_path / 'inline'), train_losses(tmp_path / 'cached')
  assert len(losses[0]) == len(losses[1]) == 4
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
  assert losses[0][0] != losses[0][-1]  # it trained
  for key in ('ccc_valence', 'ccc_arousal'):
    assert cached['validation'][key] == pytest.approx(inline['validation'][key], abs=1e-4)

  exp = loop.Experiment(config, tmp_path / 'cached')  # the cached model has no backbone parameters
  assert set(jax.device_get(exp.state.params)) == {'fusion', 'va'}
  exp.close()
