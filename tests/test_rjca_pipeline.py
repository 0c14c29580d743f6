"""RJCA clip windows read from the records, and the smoke run of configs/rjca.py through the training loop."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from affjax.data import affwild2, builder, records as records_lib
from affjax.data.views import clips, predictions
from affjax.train import loop
from configs import rjca


def test_clip_loader_reads_the_sampled_frames_labels_and_audio(tiny_records):
  records = records_lib.open_records(tiny_records, 'train')
  config = rjca.get_config('smoke')
  config.data.image_size = 112
  load = clips.loader(records, config, train=False)
  video = records.videos[0]
  chunks = [records.source[video.first_record + k] for k in range(video.num_chunks)]
  whole = {k: np.concatenate([ch[k] for ch in chunks]) for k in ('faces', 'face_mask', 'labels', 'label_mask', 'audio')}
  seen = []
  for window in range(clips.num_windows(video.num_frames, 2)):
    out = load(np.array([0, window]))
    assert out['faces'].shape == (2, 8, 112, 112, 3)
    assert out['clip_audio'].shape == (2, clips.clip_audio_samples(config))
    for i, end in enumerate(out['frames']):
      assert out['mask'][i] == (end < video.num_frames)
      if not out['mask'][i]:
        assert not out['label_mask'][i] and not out['faces'][i].any() and not out['clip_audio'][i].any()
        continue
      seen.append(end)
      np.testing.assert_array_equal(out['labels'][i], whole['labels'][end])
      assert out['label_mask'][i] == whole['label_mask'][end]
      span = np.arange(max(end - 31, 0), end + 1)
      available = span[whole['face_mask'][span]]
      assert out['face_mask'][i] == (len(available) > 0)
      if len(available):
        for k, f in enumerate(clips.select_frames(available)):
          expected = np.asarray(Image.open(io.BytesIO(whole['faces'][f])).convert('RGB'))
          np.testing.assert_array_equal(out['faces'][i, k], expected)
      s0 = affwild2.frame_boundary_sample(max(end - 31, 0), video.fps)
      s1 = affwild2.frame_boundary_sample(end + 1, video.fps)
      n = out['clip_audio_samples'][i]
      assert n == min(s1 - s0, clips.clip_audio_samples(config))  # a longer span keeps its last samples
      np.testing.assert_array_equal(out['clip_audio'][i, -n:], whole['audio'][s1 - n:s1])
      assert not out['clip_audio'][i, :-n].any()
  np.testing.assert_array_equal(np.sort(seen), np.arange(video.num_frames))  # every frame once


def test_rjca_smoke_run_writes_metrics_and_abaw_files(tiny_tree, tmp_path):
  config = rjca.get_config('smoke')
  config.data.manual_dir = str(tiny_tree)
  config.data.records_dir = str(tmp_path / 'records')
  results = loop.train_and_evaluate(config, tmp_path / 'run')
  metrics = json.loads((tmp_path / 'run' / 'eval' / 'validation' / 'metrics.json').read_text())
  assert metrics == pytest.approx(results['validation'])
  records = records_lib.open_records(str(builder.dataset_dir(tmp_path / 'records', 32)), 'validation')
  for video in records.videos:
    lines = (tmp_path / 'run' / 'predictions' / 'validation' / f'{video.name}.txt').read_text().splitlines()
    assert lines[0] == 'valence,arousal' and len(lines) - 1 == video.num_rows
  annotated = sum(int(records.source[i]['label_mask'].sum()) for i in range(len(records.source)))
  assert metrics['num_frames'] == annotated  # every annotated frame got its clip's prediction


@pytest.mark.parametrize('size', [1, 4, 5, 20])
def test_moving_average_stays_inside_runs_without_zero_padding(size):
  x = np.random.default_rng(size).standard_normal(40)
  valid = np.ones(40, bool)
  valid[[0, 17, 18, 30]] = False
  out = predictions.moving_average(x, size, valid)
  for i in range(40):
    if not valid[i] or size <= 1:
      assert out[i] == x[i]
      continue
    window = [j for j in range(i - size // 2, i + (size - 1) // 2 + 1)
              if 0 <= j < 40 and all(valid[min(i, j):max(i, j) + 1])]
    assert out[i] == pytest.approx(np.mean(x[window]))


def test_smoothed_prediction_per_dimension():
  video = records_lib.VideoIndex(name='v', num_frames=30, fps=30.0, first_record=0, num_chunks=1, num_rows=30)
  pred = predictions.VideoPredictions.empty(video)
  values = np.random.default_rng(0).standard_normal((30, 2))
  faces = np.arange(30) != 12
  pred.add(0, values, values, np.ones(30, bool), np.ones(30, bool), face_mask=faces)
  pred.smooth = (4, 9)
  np.testing.assert_allclose(pred.prediction[:, 0], predictions.moving_average(values[:, 0], 4, faces))
  np.testing.assert_allclose(pred.prediction[:, 1], predictions.moving_average(values[:, 1], 9, faces))
  pred.smooth = (0, 0)
  np.testing.assert_allclose(pred.prediction, values)


def test_epoch_step_schedule_has_no_jump():
  """lr for epochs 0..6, then x0.8 every 2 epochs (spec §6, without the reference's 10x jump at epoch 6)."""
  from affjax.train import optim  # pylint: disable=g-import-not-at-top
  config = rjca.get_config('')
  config.optim.steps_per_epoch = 10
  schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)
  lr = config.optim.learning_rate
  for epoch in range(14):
    expected = lr * 0.8 ** max((epoch - 5) // 2, 0)
    for step in (10 * epoch, 10 * epoch + 9):
      assert float(schedule(step)) == pytest.approx(expected, rel=1e-6)
  config.optim.schedule = 'linear'
  with pytest.raises(ValueError, match='config.optim.schedule'):
    optim.learning_rate_schedule(config.optim, 10)


@pytest.mark.parametrize('field,value,message', [
    ('data.image_size', 100, 'config.data.image_size=100 is invalid: must be a multiple of 16'),
    ('data.audio_frames', 50, 'config.data.audio_frames=50 is invalid'),
    ('compat.audio_guidance_on_position_axis', True, 'needs the 49 positions'),
])
def test_bad_clip_config_names_the_field(field, value, message):
  from affjax import config_validation  # pylint: disable=g-import-not-at-top
  config = rjca.get_config('smoke')
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate(config)
