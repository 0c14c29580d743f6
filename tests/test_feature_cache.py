"""The feature cache: training the fusion from cached frozen-backbone features = running them inline."""
import json

import jax
import numpy as np
import optax
import pytest

from affjax import feature_extraction, models, parallel
from affjax.data import clips, pipeline, prepare
from affjax.train import loop, state as state_lib
from configs import cross_attn, rjca


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
  assert cache.features == {'audio': (64,)} and cache.videos == frames.videos
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


def test_rjca_training_from_the_clip_cache_follows_the_inline_frozen_loss_curve(tiny_tree, tmp_path):
  config = rjca.get_config('smoke')
  config.data.update(manual_dir=str(tiny_tree), records_dir=str(tmp_path / 'records'))
  config.data.augment.update(brightness=0.0, contrast=0.0)  # the cache holds unaugmented clips
  config.train.update(num_steps=3, log_every=1, eval_every=3, checkpoint_every=3)
  inline = loop.train_and_evaluate(config, tmp_path / 'inline')

  features_dir = feature_extraction.build_cache(config, str(tmp_path / 'features'), batch_chunks=2)
  frames = pipeline.open_records(prepare.records_dir(config), 'train')
  cache = pipeline.open_records(str(features_dir), 'train')
  assert cache.view == 'clips' and cache.videos == frames.videos
  assert cache.features == {'visual': (4, 512), 'audio': (512,)}  # 32 px faces: 2 x 2 layer-4 positions

  # At each frame, the features of the clip that ends there, as the inline model computes them from a window.
  model = models.build_model(config.model)
  state = state_lib.initial_state(model, optax.identity(), config, parallel.make_mesh(), config.seed)
  load = clips.loader(frames, config, train=False)
  video_index = 1
  video = frames.videos[video_index]
  for window in (0, 17, clips.num_windows(video.num_frames, config.data.num_clips) - 1):
    inputs = load(np.array([video_index, window]))
    expected = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                           jax.tree.map(lambda x: x[None], inputs), method='backbone_features')
    for i in np.flatnonzero(inputs['mask']):
      end = inputs['frames'][i]
      record = cache.source[video.first_record + end // cache.chunk_size]
      assert record['face_mask'][end % cache.chunk_size] == inputs['face_mask'][i]
      for part in ('visual', 'audio'):
        np.testing.assert_allclose(record[f'{part}_features'][end % cache.chunk_size], expected[part][0, i],
                                   rtol=1e-4, atol=1e-5)

  config.data.features_dir = str(features_dir)
  cached = loop.train_and_evaluate(config, tmp_path / 'cached')
  losses = train_losses(tmp_path / 'inline'), train_losses(tmp_path / 'cached')
  assert len(losses[0]) == len(losses[1]) == 3
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
  assert losses[0][0] != losses[0][-1]  # it trained
  for key in ('ccc_valence', 'ccc_arousal', 'num_frames'):
    assert cached['validation'][key] == pytest.approx(inline['validation'][key], abs=1e-4)


def test_a_feature_cache_of_the_other_view_is_refused():
  cache = pipeline.Records(directory='/cache', split='validation', chunk_size=32, videos=(), features={'audio': (64,)})
  with pytest.raises(ValueError, match="config.data.view='clips'.*holds features of the 'frames' view"):
    pipeline.eval_dataset(cache, rjca.get_config('smoke'))
