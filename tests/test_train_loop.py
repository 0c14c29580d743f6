"""The training loop: sharded step = single device, crash + resume = uninterrupted, NaN stop, config errors."""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from affjax import checkpoint, config_validation, parallel, systems
from affjax.models.backbones import mobilefacenet
from affjax.data import builder, pipeline, records as records_lib
from affjax.train import loop, state as state_lib, step as step_lib
from configs import cross_attn


def smoke_config(tiny_tree, tmp_path, variant='smoke,audio'):
  config = cross_attn.get_config(variant)
  config.data.manual_dir = str(tiny_tree)
  config.data.records_dir = str(tmp_path / 'records')
  config.data.test_list = 'va_test_set.txt'
  return config


def one_step_on(devices, model, tx, config, batch):
  mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
  state = state_lib.initial_state(model, tx, config, mesh, seed=0)
  with jax.set_mesh(mesh):
    acc = jax.device_put(step_lib.zero_accumulator(), parallel.replicated(mesh))
    state, acc = step_lib.make_train_step(model, tx, config)(state, acc, parallel.to_global(batch, mesh))
    return jax.device_get((state.params, state.batch_stats, acc['loss']))


def test_sharded_train_step_equals_single_device(tiny_tree, tiny_records, tmp_path):
  """One train step (train-mode BatchNorm over the global batch, dropout, masked CCC) on 4 devices vs 1.

  The audio model is used: through MobileFaceNet's 15 train-mode BatchNorms at random init the loss's
  rounding-level differences (the sharded reduction order) grow ~1e4-fold, so the visual backbone is
  checked on its own below, where the sharded gradient is exact. SGD, not Adam: Adam's first step maps
  gradients near zero to +-lr by their sign, which would turn rounding into lr-sized differences.
  """
  assert jax.device_count() == 4  # tests/conftest.py forces 4 host devices
  config = smoke_config(tiny_tree, tmp_path)
  batch = next(iter(pipeline.train_dataset(records_lib.open_records(tiny_records, 'train'), config)))
  model, tx = systems.build_model(config.model, config.compat), optax.sgd(0.1)
  (params_1, stats_1, loss_1), (params_4, stats_4, loss_4) = (
      one_step_on(devices, model, tx, config, batch) for devices in (jax.devices()[:1], jax.devices()))
  assert float(loss_1) == pytest.approx(float(loss_4), rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), stats_1, stats_4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params_1, params_4)


def test_sharded_mobilefacenet_gradient_equals_single_device():
  """The sharded train-mode gradient equals the single-device one, in float64 (in float32 the reduction
  order's rounding is amplified through the BatchNorm chain to ~1e-2)."""
  with jax.enable_x64(True):
    images = np.random.default_rng(0).uniform(size=(8, 112, 112, 3))
    mask = np.arange(8) < 6
    net = mobilefacenet.MobileFaceNet(dtype=jnp.float64)
    variables = jax.tree.map(lambda v: v.astype(jnp.float64),
                             net.init(jax.random.key(0), images[:1], train=False))
    grads = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
      with jax.set_mesh(mesh):
        inputs = parallel.to_global(dict(x=images, m=mask), mesh)

        def loss(params, x, m):
          y, _ = net.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=True, mask=m,
                           mutable=['batch_stats'])
          return (y[:6] ** 2).sum()
        grads.append(jax.device_get(jax.jit(jax.grad(loss))(variables['params'], inputs['x'], inputs['m'])))
  # float64 rounding grows to ~1e-9 through the chain; a sharding error (per-device BatchNorm statistics, a
  # wrong reduction) shows as >= 1e-2.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-12), *grads)


def final_checkpoint(config, workdir):
  exp = loop.Experiment(config, workdir)
  try:
    step = exp.checkpoints.latest_step()
    state = exp.checkpoints.restore(step, exp.state)
    return step, jax.device_get(state.replace(rng=jax.random.key_data(state.rng)))
  finally:
    exp.close()


def crash_after(monkeypatch, calls: int, poison: bool = False):
  """Makes the train step fail (or see NaN labels, if `poison`) from its `calls`-th call on."""
  real = step_lib.make_train_step

  def make(*args, **kwargs):
    train_step, count = real(*args, **kwargs), [0]

    def wrapped(state, acc, batch):
      count[0] += 1
      if count[0] >= calls:
        if not poison:
          raise KeyboardInterrupt('simulated crash')
        with jax.transfer_guard('allow'):
          batch = dict(batch, labels=batch['labels'] * jnp.nan)
      return train_step(state, acc, batch)
    return wrapped

  monkeypatch.setattr(step_lib, 'make_train_step', make)


def test_crash_then_rerun_equals_uninterrupted_run(tiny_tree, tmp_path, monkeypatch):
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(num_steps=6, checkpoint_every=2, eval_every=100, log_every=1)
  loop.train_and_evaluate(config, tmp_path / 'straight')
  with monkeypatch.context() as m:
    crash_after(m, calls=4)
    with pytest.raises(KeyboardInterrupt):
      loop.train_and_evaluate(config, tmp_path / 'crashed')
  assert checkpoint.Checkpointer(tmp_path / 'crashed').latest_step() == 2  # work since step 2 was lost
  loop.train_and_evaluate(config, tmp_path / 'crashed')  # the same command again resumes
  (step_a, a), (step_b, b) = final_checkpoint(config, tmp_path / 'straight'), final_checkpoint(config, tmp_path / 'crashed')
  assert step_a == step_b == 6
  jax.tree.map(np.testing.assert_array_equal, a, b)
  rows = [json.loads(line) for line in (tmp_path / 'crashed' / 'scalars.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2, 3, 4, 5, 6]  # step 3, logged before the crash, once


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_tree, tmp_path, monkeypatch):
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(num_steps=6, checkpoint_every=2, eval_every=100, log_every=3)
  crash_after(monkeypatch, calls=4, poison=True)
  with pytest.raises(loop.NonFiniteLossError, match='last good checkpoint'):
    loop.train_and_evaluate(config, tmp_path / 'run')
  monkeypatch.undo()
  step, state = final_checkpoint(config, tmp_path / 'run')
  assert step == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_compact_frames_run_trains_on_the_kept_frames_and_evaluates_the_timeline(tiny_tree, tmp_path):
  config = smoke_config(tiny_tree, tmp_path)
  config.compat.compact_frames = True
  config.train.update(num_steps=2, eval_every=2, checkpoint_every=2, log_every=1)
  results = loop.train_and_evaluate(config, tmp_path / 'run')
  logged = [json.loads(line) for line in (tmp_path / 'run' / 'scalars.jsonl').read_text().splitlines()]
  assert all(np.isfinite(r['train/loss']) for r in logged if 'train/loss' in r)
  annotated = sum(int(r['label_mask'].sum()) for r in records_lib.open_records(
      str(builder.dataset_dir(config.data.records_dir, 32)), 'validation').source)
  assert results['validation']['num_frames'] == annotated  # evaluation keeps the whole timeline


def test_smoke_run_writes_metrics_abaw_files_events_and_profile(tiny_tree, tmp_path):
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(profile_steps=2, first_profile=1)
  results = loop.train_and_evaluate(config, tmp_path / 'run')
  assert list((tmp_path / 'run').glob('events.out.tfevents.*'))  # tensorboardX scalars and traces
  assert list((tmp_path / 'run' / 'plugins' / 'profile').glob('*/*.xplane.pb'))  # jax.profiler trace
  metrics = json.loads((tmp_path / 'run' / 'eval' / 'validation' / 'metrics.json').read_text())
  assert set(metrics) == {'ccc_valence', 'ccc_arousal', 'ccc_mean', 'num_frames'}
  assert metrics == pytest.approx(results['validation'])
  records = records_lib.open_records(str(builder.dataset_dir(config.data.records_dir, 32)), 'validation')
  for video in records.videos:
    lines = (tmp_path / 'run' / 'predictions' / 'validation' / f'{video.name}.txt').read_text().splitlines()
    assert lines[0] == 'valence,arousal' and len(lines) - 1 == video.num_rows
    values = np.array([[float(x) for x in line.split(',')] for line in lines[1:]])
    assert np.all(np.abs(values) <= 1)
  annotated = sum(int(records.source[i]['label_mask'].sum()) for i in range(len(records.source)))
  assert metrics['num_frames'] == annotated  # every annotated frame, faces or not
  test_videos = records_lib.open_records(str(builder.dataset_dir(config.data.records_dir, 32)), 'test').videos
  assert not (tmp_path / 'run' / 'predictions' / 'test').exists()  # only config.eval.splits are written
  assert test_videos


@pytest.mark.parametrize('field,value,message', [
    ('train.batch_size', 6, 'config.train.batch_size=6 is invalid: must be a multiple of the 4 devices'),
    ('data.eval_hop', 16, 'config.data.eval_hop=16 is invalid'),
    ('data.image_size', 96, 'MobileFaceNet needs 112x112'),
    ('data.manual_dir', '/nonexistent/affwild2', 'config.data.manual_dir'),
    ('train.dtype', 'float16', 'config.train.dtype'),
    ('model.modalities', ('audio', 'video'), 'config.model.modalities'),
    ('optim.weight_decay', float('inf'), 'config.optim.weight_decay=inf is invalid'),
    ('optim.weight_decay', -0.1, 'config.optim.weight_decay=-0.1 is invalid'),
    ('optim.b1', 1.0, 'config.optim.b1=1.0 is invalid'),
    ('optim.b2', float('nan'), 'config.optim.b2=nan is invalid'),
    ('optim.eps', 0.0, 'config.optim.eps=0.0 is invalid'),
    ('optim.grad_clip_norm', -1.0, 'config.optim.grad_clip_norm=-1.0 is invalid'),
    ('optim.learning_rate', float('inf'), 'config.optim.learning_rate=inf is invalid'),
    ('optim.finetune_learning_rate', 0.0, 'config.optim.finetune_learning_rate=0.0 is invalid'),
    ('train.on_nonfinite', 'skip', "config.train.on_nonfinite='skip' is invalid"),
])
def test_bad_config_value_names_the_field(field, value, message):
  config = cross_attn.get_config('smoke')
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(config_validation.ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    config_validation.validate(config)


def test_unknown_field_is_one_line_naming_the_closest_fields(tmp_path):
  run = subprocess.run([sys.executable, '-m', 'affjax.main', '--config=configs/cross_attn.py:smoke',
                        '--config.optim.weightdecay=0.1', f'--workdir={tmp_path}'], capture_output=True, text=True,
                       cwd=pathlib.Path(__file__).parents[1], timeout=120)
  assert run.returncode != 0
  assert run.stderr.strip().splitlines() == [
      "--config.optim.weightdecay=0.1: no such field: config.optim has no 'weightdecay' "
      '(closest: optim.weight_decay, optim.coupled_weight_decay)']  # declared in configs/base.py for every system


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match="unknown config variant 'tiny'"):
    cross_attn.get_config('smoke,tiny')


@pytest.mark.parametrize('weights,best', [((0.5, 0.5), 2), ((1.0, 0.0), 4), ((0.75, 0.25), 6)])
def test_best_checkpoint_follows_the_selection_weights(tmp_path, weights, best):
  import grain  # pylint: disable=g-import-not-at-top
  scores = {2: (0.5, 0.9), 4: (0.8, 0.1), 6: (0.7, 0.5)}  # step -> (CCC valence, CCC arousal)
  ckpt = checkpoint.Checkpointer(tmp_path / str(weights), selection_weights=weights)
  data = iter(grain.MapDataset.source([0, 1, 2]).to_iter_dataset())
  for step, (v, a) in scores.items():
    ckpt.save(step, {'w': np.full(2, step, np.float32)}, data)
    ckpt.record_metrics(step, dict(ccc_valence=v, ccc_arousal=a))  # evaluation runs after the save
  ckpt.wait()
  assert ckpt.best_step() == best
  restored = ckpt.restore(best, {'w': np.zeros(2, np.float32)})
  np.testing.assert_array_equal(restored['w'], [best, best])
  ckpt.close()
