"""affjax.predict of LFAN runs: the VGGish follower's features computed from the video's audio as the run's feature
cache holds them, the run's saved feature statistics, and the predictions evaluation makes of the same video."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from affjax.systems.lfan import followers as follower_features
from affjax.train import loop
from affjax.video import run as run_lib, views
from configs import lfan
import test_predict
import video_fixtures


@pytest.fixture(scope='module')
def lfan_run(tiny_tree, tmp_path_factory):
  """(config, workdir) of a `:smoke` LFAN run trained on the tiny tree (two epochs: it releases a group)."""
  tmp = tmp_path_factory.mktemp('lfan')
  config = lfan.get_config('smoke')
  config.data.manual_dir, config.data.records_dir = str(tiny_tree), str(tmp / 'records')
  loop.train_and_evaluate(config, tmp / 'run')
  return config, tmp / 'run'


def chunk_features(records, video, part: str) -> np.ndarray:
  """`[N, F]` `<part>_features` of every frame of `video` from the chunks of `records`."""
  rows = [records.source[video.first_record + j][f'{part}_features'] for j in range(video.num_chunks)]
  return np.concatenate(rows)[:video.num_frames]


def test_lfan_predicts_a_video_as_evaluation_predicts_its_records(lfan_run, tiny_tree):
  """A validation video of the tree (missing crops included) through the predict path of the CLI's config (no
  records, no feature cache: VGGish from the video's audio, statistics from the workdir) and through the run's own
  evaluation (`loop.Experiment`: its feature cache, the recipe's final weights, `evaluate.predict_split`)."""
  config, workdir = lfan_run
  exp = loop.Experiment(config, workdir)
  try:
    loop.make_recipe(exp).final_state()
    cache = exp.records('validation').side  # the VGGish features the run trained and evaluated with
    index = cache.videos[0]
    expected = exp.predict('validation')[0].prediction
    prepared = exp.config
  finally:
    exp.close()
  run = run_lib.load_run(lfan.get_config('smoke'), workdir)
  assert tuple(run.config.model.feature_norm.vggish) == tuple(prepared.model.feature_norm.vggish)
  assert tuple(run.config.model.feature_norm.mfcc) == tuple(prepared.model.feature_norm.mfcc)
  decoded = test_predict.tree_video(tiny_tree, index.name)
  assert not decoded.face_mask.all()
  video = views.video_records(decoded, run.side)
  np.testing.assert_allclose(chunk_features(video.side, video.videos[0], 'vggish'),
                             chunk_features(cache, index, 'vggish'), rtol=1e-5, atol=1e-5)
  got = views.predict(decoded, run)
  assert got.shape == (decoded.num_frames, 2)
  np.testing.assert_allclose(got, expected, atol=2e-4)


def test_lfan_cli_predicts_a_video(lfan_run, tmp_path):
  _, workdir = lfan_run
  path = tmp_path / 'astronaut.mp4'
  video_fixtures.moving_face_video(path, num_frames=40, faceless=test_predict.FACELESS)
  proc = subprocess.run([sys.executable, '-m', 'affjax.predict', '--config=configs/lfan.py:smoke',
                         f'--workdir={workdir}', f'--video={path}', f'--out={tmp_path}/out'],
                        cwd=test_predict.ROOT, capture_output=True, text=True, timeout=300, env=test_predict._env())
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'features' in proc.stdout  # the VGGish stage is timed on its own
  lines = (tmp_path / 'out' / 'astronaut.csv').read_text().splitlines()
  assert lines[0] == 'frame,time_s,valence,arousal,face'
  rows = np.array([[float(x) for x in line.split(',')] for line in lines[1:]])
  assert rows.shape == (40, 5) and np.isfinite(rows).all()
  np.testing.assert_array_equal(rows[:, 0], np.arange(40))
  assert np.all(np.abs(rows[:, 2:4]) <= 1) and rows[:, 2:4].std(axis=0).min() > 0
  assert rows[list(test_predict.FACELESS), 4].sum() == 0
  assert Image.open(tmp_path / 'out' / 'astronaut.png').size == (960, 360)


def test_saved_statistics_come_from_the_workdir_or_say_how_to_set_them(tmp_path):
  config = lfan.get_config('smoke')
  with pytest.raises(FileNotFoundError, match=r'feature_norm.json holds no statistics of the follower\(s\) vggish, '
                                              r'mfcc.*--config.model.feature_norm.vggish="\(mean, std\)"'):
    follower_features.saved_statistics(config, tmp_path)
  (tmp_path / follower_features.NORM_FILE).write_text(json.dumps({'vggish': [0.5, 2.0]}))
  config.model.feature_norm.mfcc = (1.0, 3.0)  # given in the config: kept
  restored = follower_features.saved_statistics(config, tmp_path)
  assert tuple(restored.model.feature_norm.vggish) == (0.5, 2.0)
  assert tuple(restored.model.feature_norm.mfcc) == (1.0, 3.0)
  assert follower_features.saved_statistics(lfan.get_config('smoke,visual'), tmp_path / 'none').model.followers == ()
