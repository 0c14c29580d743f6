"""LFAN's follower inputs and folds: VGGish feature records and their join to the frame windows, training-partition
statistics, cross-validation partitions of the records, the synthetic tree's test labels."""
import json

import jax
import numpy as np
import pytest

from affjax.data import folds
from affjax.systems.lfan import followers as follower_features
from affjax.data import builder, records as records_lib, synthetic
from affjax.data.views import frames
from affjax.models.backbones import vggish
from configs import lfan

# Enough training names for the 5 cross-validation chunks (the pair makes 6 names of 5 videos).
FOLD_TREE = dict(num_train=6, num_validation=1, num_test=1, min_frames=30, max_frames=40, image_size=32, seed=1)


@pytest.fixture(scope='module')
def fold_records(tmp_path_factory):
  tree = synthetic.ensure(tmp_path_factory.mktemp('fold_tree') / 'tree', **FOLD_TREE)
  out = tmp_path_factory.mktemp('fold_records')
  builder.build(tree, out, chunk_size=16)
  return tree, str(builder.dataset_dir(out, 16))


@pytest.fixture(scope='module')
def vggish_dir(tiny_records, tmp_path_factory):
  config = lfan.get_config('smoke')
  return str(follower_features.build_vggish(config, tiny_records, tmp_path_factory.mktemp('vggish')))


def _wave(records, video):
  return np.concatenate([records.source[video.first_record + j]['audio'] for j in range(video.num_chunks)])


def test_vggish_records_hold_every_frames_embedding_and_join_the_windows(tiny_records, vggish_dir):
  """The cached rows of a video = VGGish (the config's random weights) on its frame examples; a frame window of
  the records with the cache joined carries the rows of its frames (zeros past the video's end)."""
  config = lfan.get_config('smoke')
  records = records_lib.open_records(tiny_records, 'validation', side_directory=vggish_dir)
  assert records.side.features == {'vggish': (128,)}
  video = records.videos[1]
  direct = np.asarray(vggish.VGGish().apply(follower_features.vggish_variables(config),
                                            vggish.frame_examples(_wave(records, video), video.fps, video.num_frames)))
  side = records.side
  cached = np.concatenate([side.source[video.first_record + j]['vggish_features'] for j in range(video.num_chunks)])
  np.testing.assert_allclose(cached[:video.num_frames], direct, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(cached[video.num_frames:], 0.0)

  loader = frames.WindowLoader(records=records, window=24, image_size=32, audio_window=config.data.audio_window,
                                 min_fps=config.data.min_fps)
  start = video.num_frames - 10
  window = loader(np.array([1, start]))
  np.testing.assert_array_equal(window['vggish_features'][:10], cached[start:start + 10])
  np.testing.assert_array_equal(window['vggish_features'][10:], 0.0)
  assert window['mask'].sum() == 10


def test_cached_statistics_are_over_every_frame_once(tiny_records, vggish_dir):
  records = records_lib.open_records(tiny_records, 'train', side_directory=vggish_dir)
  rows = np.concatenate([np.concatenate([records.side.source[v.first_record + j]['vggish_features']
                                         for j in range(v.num_chunks)])[:v.num_frames] for v in records.videos])
  mean, std = follower_features.cached_statistics(records, 'vggish')
  assert mean == pytest.approx(rows.mean(dtype=np.float64), rel=1e-6)
  assert std == pytest.approx(rows.std(ddof=1, dtype=np.float64), rel=1e-6)
  with pytest.raises(ValueError, match='side_features_dir'):
    follower_features.cached_statistics(records_lib.open_records(tiny_records, 'train'), 'vggish')


def test_a_cache_of_other_records_is_refused(tiny_records, fold_records, vggish_dir):
  with pytest.raises(ValueError, match='was not built from the records'):
    records_lib.open_records(fold_records[1], 'train', side_directory=vggish_dir)


def test_fold_partitions_read_the_right_chunks_of_both_record_splits(fold_records):
  _, directory = fold_records
  official = {s: records_lib.open_records(directory, s) for s in ('train', 'validation', 'test')}
  for fold in range(folds.NUM_FOLDS):
    want = folds.fold_split([v.name for v in official['train'].videos], [v.name for v in official['validation'].videos],
                            fold)
    for split, names in zip(('train', 'validation'), want):
      records = records_lib.open_records(directory, split, fold)
      assert [v.name for v in records.videos] == names
      for video in records.videos:
        for j in range(video.num_chunks):
          chunk = records.source[video.first_record + j]
          assert (chunk['video'].decode(), chunk['start']) == (video.name, j * records.chunk_size)
    assert records_lib.open_records(directory, 'test', fold).videos == official['test'].videos
  fold0 = records_lib.open_records(directory, 'validation', 0)
  assert [v.name for v in fold0.videos] == [v.name for v in official['validation'].videos]


def test_prepare_fills_statistics_of_the_folds_training_partition_once(fold_records, tmp_path, monkeypatch):
  tree, directory = fold_records
  config = lfan.get_config('smoke')
  config.data.update(manual_dir=str(tree), fold=2)
  config.model.followers = ('vggish', 'mfcc')
  config.model.feature_norm.mfcc = (0.5, 2.0)  # given: kept
  prepared = follower_features.prepare(config, directory, tmp_path)
  assert prepared.data.side_features_dir
  train = records_lib.open_records(directory, 'train', 2, prepared.data.side_features_dir)
  assert tuple(prepared.model.feature_norm.vggish) == pytest.approx(follower_features.cached_statistics(train,
                                                                                                        'vggish'))
  assert tuple(prepared.model.feature_norm.mfcc) == (0.5, 2.0)
  assert config.model.feature_norm.vggish == ()  # the caller's config is untouched
  saved = json.loads((tmp_path / follower_features.NORM_FILE).read_text())
  assert saved == {'vggish': list(prepared.model.feature_norm.vggish)}
  monkeypatch.setattr(follower_features, 'statistics', lambda *a: pytest.fail('recomputed'))
  again = follower_features.prepare(config, directory, tmp_path)  # a resumed run reads the saved statistics
  assert tuple(again.model.feature_norm.vggish) == tuple(prepared.model.feature_norm.vggish)


def test_synthetic_true_labels_match_the_annotations(tiny_tree, tiny_records, tmp_path):
  """The recomputed curves equal every annotated row of the tree; the test videos get one row per frame."""
  labels = synthetic.true_labels(tiny_tree)
  annotated = 0
  for name, (split, curve) in labels.items():
    if split == 'test':
      continue
    rows = np.loadtxt(tiny_tree / 'annotations' / 'VA_Estimation_Challenge' / synthetic.ANNOTATION_DIRS[split]
                      / f'{name}.txt', delimiter=',', skiprows=1)[:len(curve)]
    valid = rows[:, 0] != -5
    np.testing.assert_allclose(rows[valid], curve[:len(rows)][valid], atol=6e-5)
    annotated += valid.sum()
  assert annotated > 100
  names = synthetic.write_test_labels(tiny_tree, tmp_path / 'labels')
  test = records_lib.open_records(tiny_records, 'test').videos
  assert names == [v.name for v in test]
  lines = (tmp_path / 'labels' / f'{names[0]}.txt').read_text().splitlines()
  assert lines[0] == 'valence,arousal' and len(lines) - 1 == test[0].num_frames


def test_vggish_follower_without_its_features_says_how_to_get_them():
  config = lfan.get_config('smoke')
  config.model.feature_norm.update(vggish=(0.0, 1.0), mfcc=(0.0, 1.0))
  from affjax import systems  # pylint: disable=g-import-not-at-top
  from affjax.data import views  # pylint: disable=g-import-not-at-top
  batch = views.of(config).example_batch(config, 1)  # what the frame records give without the VGGish cache joined
  with pytest.raises(ValueError, match='side_features_dir'):
    jax.eval_shape(lambda: systems.build_model(config.model, config.compat).init(jax.random.key(0), batch, train=False))
  config.model.feature_norm.vggish = ()
  with pytest.raises(ValueError, match=r'config.model.feature_norm.vggish=\(\)'):
    systems.build_model(config.model, config.compat)
