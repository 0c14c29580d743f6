"""LFAN training pieces: per-window CCC loss, window crops, frozen groups in the optimiser, and a smoke run."""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax import checkpoint, config_validation, evaluate
from affjax.data import augment, builder, records as records_lib
from affjax.systems.lfan import model as lfan_model
from affjax.train import loop, losses, optim, recipe_epochs
from configs import lfan
from test_nonfinite import poison, saved_steps


def saved_recipe(workdir) -> dict:
  """The epoch recipe's state in the latest checkpoint under `workdir`."""
  checkpoints = checkpoint.Checkpointer(workdir)
  try:
    return checkpoints.restore_json(checkpoints.latest_step(), recipe_epochs.RECIPE_ITEM)
  finally:
    checkpoints.close()


def _np_ccc(p, t):
  p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
  return 2 * np.mean((p - p.mean()) * (t - t.mean())) / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)


def test_window_mean_ccc_averages_windows_with_two_valid_frames():
  rng = np.random.default_rng(0)
  pred, target = rng.standard_normal((4, 10)).astype(np.float32), rng.standard_normal((4, 10)).astype(np.float32)
  mask = np.ones((4, 10), bool)
  mask[1, 6:] = False  # padding
  mask[2, 1:] = False  # one valid frame: not counted
  mask[3, ::2] = False
  ref = np.mean([_np_ccc(pred[i][mask[i]], target[i][mask[i]]) for i in (0, 1, 3)])
  ours = float(losses.window_mean_ccc(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask)))
  assert ours == pytest.approx(ref, rel=1e-5)
  pred2 = pred.copy()
  pred2[1, 6:] = 100.0  # padded and unlabelled frames never count
  pred2[2] = 50.0
  assert float(losses.window_mean_ccc(pred2, target, mask)) == pytest.approx(ours, rel=1e-6)


def test_crop_window_is_one_crop_for_every_frame():
  faces = np.random.default_rng(1).integers(0, 256, (5, 48, 48, 3)).astype(np.uint8)
  np.testing.assert_array_equal(augment.crop_window(faces, 40), faces[:, 4:44, 4:44])
  crops = {augment.crop_window(faces, 40, np.random.default_rng(s))[0, 0, 0].tobytes() for s in range(20)}
  assert len(crops) > 5  # random positions
  crop = augment.crop_window(faces, 40, np.random.default_rng(3))
  matches = [(i, j) for i in range(9) for j in range(9) if np.array_equal(faces[0, i:i + 40, j:j + 40], crop[0])]
  assert len(matches) == 1
  i, j = matches[0]
  np.testing.assert_array_equal(crop, faces[:, i:i + 40, j:j + 40])  # the same offsets in every frame
  with pytest.raises(ValueError, match='config.data.crop_size'):
    augment.crop_window(faces, 50)


def test_frozen_groups_get_no_update_and_decay_is_coupled():
  """Frozen leaves never move (not even by weight decay); trained ones follow Adam on g + wd * p."""
  params = {'visual': {'unit0': {'w': jnp.ones(3)}, 'head_dense': {'w': jnp.ones(3)}}, 'fusion': {'w': jnp.ones(2)}}
  config = lfan.get_config()
  tx = optim.make_optimizer(config, lfan_model.make_param_labels(released=1))
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates['visual']['unit0']['w'], 0.0)
  # Adam's first step on the decay gradient wd * p alone: -lr * sign(p) (to within eps)
  np.testing.assert_allclose(updates['visual']['head_dense']['w'], -config.optim.learning_rate, rtol=1e-4)
  np.testing.assert_allclose(updates['fusion']['w'], -config.optim.learning_rate, rtol=1e-4)


def test_lfan_smoke_run_writes_metrics_and_abaw_files(tiny_tree, tmp_path):
  config = lfan.get_config('smoke')
  config.data.manual_dir = str(tiny_tree)
  config.data.records_dir = str(tmp_path / 'records')
  config_validation.validate(config)
  results = loop.train_and_evaluate(config, tmp_path / 'run')
  metrics = json.loads((tmp_path / 'run' / 'eval' / 'validation' / 'metrics.json').read_text())
  assert metrics == pytest.approx(results['validation'])
  assert np.isfinite([metrics['ccc_valence'], metrics['ccc_arousal']]).all()
  records = records_lib.open_records(str(builder.dataset_dir(config.data.records_dir, 32)), 'validation')
  for video in records.videos:
    lines = (tmp_path / 'run' / 'predictions' / 'validation' / f'{video.name}.txt').read_text().splitlines()
    assert lines[0] == 'valence,arousal' and len(lines) - 1 == video.num_rows
  # the one training loop gives the epoch recipe the summary and the throughput scalars of every recipe
  recipe = saved_recipe(tmp_path / 'run')
  summary = json.loads((tmp_path / 'run' / 'eval' / 'summary.json').read_text())
  assert summary == dict(step=recipe['best_step'], validation=pytest.approx(results['validation']))
  last = max(saved_steps(tmp_path / 'run'))
  assert recipe['epoch'] == 2 and last % 2 == 0
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'scalars.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train/loss' in r] == list(range(1, last + 1))  # log_every=1
  perf = [r for r in rows if 'perf/frames_per_s' in r]
  assert len(perf) == last and all(r['perf/frames_per_s'] > 0 and r['perf/steps_per_s'] > 0 and
                                   0 <= r['perf/data_wait_fraction'] <= 1 for r in perf)
  assert [(r['step'], r['train/epoch']) for r in rows if 'train/epoch' in r] == [(last // 2, 1), (last, 2)]
  assert [r['step'] for r in rows if 'validation/ccc_mean' in r] == [last // 2, last]


def test_lfan_config_errors_name_the_field():
  config = lfan.get_config('smoke')
  config.data.crop_size = 64
  with pytest.raises(config_validation.ConfigError, match='config.data.crop_size=64'):
    config_validation.validate(config)
  with pytest.raises(ValueError, match="unknown config variant 'tiny'"):
    lfan.get_config('smoke,tiny')
  from affjax import systems  # pylint: disable=g-import-not-at-top
  config = lfan.get_config('smoke')
  config.data.audio_window = 1000
  with pytest.raises(ValueError, match='config.data.audio_window=1000'):
    systems.build_model(config.model, config.compat)


def test_epoch_recipe_releases_after_plateau_and_resumes(tiny_tree, tmp_path, monkeypatch):
  """A flat validation CCC (patience 0, one cut per release): epoch 1 is the best, epoch 2 cuts and releases the
  next IR-50 group (LR back to the initial value, a fresh plateau scheduler); rerunning with one more epoch resumes
  at epoch 3, where the fresh scheduler's first metric is its best: no cut, no release."""
  flat = dict(ccc_valence=0.1, ccc_arousal=0.1, ccc_mean=0.1, num_frames=1)
  monkeypatch.setattr(evaluate, 'split_metrics', lambda videos: dict(flat))
  config = lfan.get_config('smoke,visual')  # the recipe alone: no follower features to prepare
  config.data.manual_dir = str(tiny_tree)
  config.data.records_dir = str(tmp_path / 'records')
  results = loop.train_and_evaluate(config, tmp_path / 'run')
  recipe = saved_recipe(tmp_path / 'run')
  assert recipe['epoch'] == 2 and recipe['controller']['released'] == 2
  assert recipe['controller']['scheduler']['lr'] == config.optim.learning_rate
  assert results['validation'] == flat
  config.train.num_epochs = 3
  loop.train_and_evaluate(config, tmp_path / 'run')
  recipe = saved_recipe(tmp_path / 'run')
  assert recipe['epoch'] == 3 and recipe['controller']['released'] == 2
  assert recipe['controller']['scheduler']['best'] == 0.1 and recipe['controller']['cuts'] == 0


def test_epoch_recipe_rolls_back_to_the_last_good_epoch_and_is_profiled(tiny_tree, tmp_path, monkeypatch, caplog):
  """The epoch recipe on the one training loop: a non-finite loss in epoch 2 rolls back to the checkpoint of epoch 1
  (its recipe state and best weights with it), skips the batches trained on since and goes on; the profiler traces
  the first step of the run."""
  config = lfan.get_config('smoke,visual')
  config.data.manual_dir, config.data.records_dir = str(tiny_tree), str(tmp_path / 'records')
  config.train.update(num_epochs=1, on_nonfinite='rollback')
  loop.train_and_evaluate(config, tmp_path / 'run')
  first_epoch, = saved_steps(tmp_path / 'run')
  config.train.update(num_epochs=2, profile_steps=1, first_profile=0)
  poison(monkeypatch, calls={2})  # the second step of epoch 2: by then the checkpoint of epoch 1 is good
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(config, tmp_path / 'run')
  assert f'rolled back to the checkpoint of step {first_epoch} and skipped the 2 batches' in caplog.text
  recipe = saved_recipe(tmp_path / 'run')
  assert recipe['epoch'] == 2 and max(saved_steps(tmp_path / 'run')) == 2 * first_epoch
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'scalars.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train/loss' in r] == list(range(1, 2 * first_epoch + 1))  # rolled back: once
  assert all(np.isfinite(r['train/loss']) for r in rows if 'train/loss' in r)
  assert list((tmp_path / 'run' / 'plugins' / 'profile').glob('*/*.xplane.pb'))


def test_eval_of_a_checkpoint_without_recipe_state_scores_that_state(tiny_tree, tmp_path):
  """`--mode=eval` of an LFAN run whose checkpoint holds the state alone (as `tools/convert_torch.py --out_workdir`
  writes one) scores that state."""
  config = lfan.get_config('smoke,visual')
  config.data.manual_dir, config.data.records_dir = str(tiny_tree), str(tmp_path / 'records')
  exp = loop.Experiment(config, tmp_path / 'run')
  try:
    exp.checkpoints.save(0, exp.state, None)
    exp.checkpoints.wait()
    assert exp.checkpoints.has_item(0, 'state') and not exp.checkpoints.has_item(0, recipe_epochs.RECIPE_ITEM)
    expected = evaluate.split_metrics(exp.predict('validation'))
  finally:
    exp.close()
  results = loop.evaluate_only(config, tmp_path / 'run')
  assert results['validation'] == pytest.approx(expected)
  assert json.loads((tmp_path / 'run' / 'eval' / 'summary.json').read_text())['step'] == 0
