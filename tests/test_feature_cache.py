"""The feature cache: training the fusion from cached frozen-backbone features = running them inline."""
import json

import jax
import numpy as np
import pytest

from affjax import feature_extraction
from affjax.data import feature_cache, pipeline, prepare, records as records_lib
from affjax.data.views import clips
from affjax.train import loop
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
  frames = records_lib.open_records(prepare.records_dir(config), 'train')
  cache = records_lib.open_records(str(features_dir), 'train')
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


def stand_in_backbones(batch):
  """Cheap stand-ins for the clip backbones, per clip: the mean colour of each sampled frame `[8, 3]` and
  (sum, length) of the audio `[2]`."""
  return dict(visual=batch['faces'].astype(np.float64).mean(axis=(3, 4)),
              audio=np.stack([batch['clip_audio'].astype(np.float64).sum(-1), batch['clip_audio_samples']], -1))


def test_the_clip_cache_stores_at_each_frame_the_clip_that_ends_there(tiny_records, tmp_path):
  """Every clip window read from the cache (16-frame chunks: clips cross chunk boundaries) equals the window
  read from the frame records with the backbones applied to its clips."""
  config = rjca.get_config('smoke,frozen')
  features = feature_cache.window_features(stand_in_backbones, feature_extraction.chunk_loader(config), batch_chunks=3)
  features_dir = feature_cache.build(tiny_records, tmp_path, shapes={'visual': (8, 3), 'audio': (2,)},
                                     features=features, view='clips')
  for split in ('train', 'validation'):
    frames, cache = records_lib.open_records(tiny_records, split), records_lib.open_records(str(features_dir), split)
    assert cache.view == 'clips' and cache.features == {'visual': (8, 3), 'audio': (2,)}
    inline, cached = clips.loader(frames, config, train=False), clips.loader(cache, config, train=True)
    for row in clips.window_table(frames.videos, config.data.num_clips):
      expected, got = inline(row), cached(row)
      features = stand_in_backbones(jax.tree.map(lambda x: x[None], expected))
      for part in ('visual', 'audio'):
        np.testing.assert_allclose(got[f'{part}_features'], features[part][0], rtol=1e-6)
      for key in ('labels', 'label_mask', 'face_mask', 'mask', 'frames', 'video_index'):
        np.testing.assert_array_equal(got[key], expected[key], err_msg=f'{split} window {row}: {key}')


def test_rjca_training_from_the_clip_cache_follows_the_inline_frozen_loss_curve(tiny_tree, tmp_path):
  """The frozen smoke run inline and from its clip cache, without colour jitter."""
  config = rjca.get_config('smoke,frozen')
  config.data.update(manual_dir=str(tiny_tree), records_dir=str(tmp_path / 'records'))
  config.data.augment.update(brightness=0.0, contrast=0.0)  # the cache holds unaugmented clips
  inline = loop.train_and_evaluate(config, tmp_path / 'inline')

  features_dir = feature_extraction.build_cache(config, str(tmp_path / 'features'), batch_chunks=1)
  cache = records_lib.open_records(str(features_dir), 'train')
  assert cache.view == 'clips' and cache.features == {'visual': (4, 512), 'audio': (512,)}  # 32 px: 2 x 2 positions
  config.data.features_dir = str(features_dir)
  cached = loop.train_and_evaluate(config, tmp_path / 'cached')
  losses = train_losses(tmp_path / 'inline'), train_losses(tmp_path / 'cached')
  assert len(losses[0]) == len(losses[1]) == config.train.num_steps
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
  for key in ('ccc_valence', 'ccc_arousal', 'num_frames'):
    assert cached['validation'][key] == pytest.approx(inline['validation'][key], abs=1e-4)


def test_a_feature_cache_of_the_other_view_is_refused():
  cache = records_lib.Records(directory='/cache', split='validation', chunk_size=32, videos=(),
                              features={'audio': (64,)})
  with pytest.raises(ValueError, match="config.data.view='clips'.*holds features of the 'frames' view"):
    pipeline.eval_dataset(cache, rjca.get_config('smoke'))
