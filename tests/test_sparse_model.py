"""The sparse_e2e model: mel patches, gather = masked dense end to end, padding isolation, FLOP accounting,
the smoke run through the entry point's loop."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax import config_validation, systems
from affjax.data import prepare, records as records_lib
from affjax.models import sparse_stages
from affjax.models.audio import spectral, token_mel
from affjax.models.backbones.vgg import SparseVggTrunk
from affjax.train import loop, state as state_lib
from configs import sparse_e2e


def test_mel_patches_are_slices_of_the_whole_signal_log_mel():
  rng = np.random.default_rng(1)
  signal = rng.normal(size=16000).astype(np.float32)
  whole = np.log(np.asarray(spectral.mel_spectrogram(signal, 16000, 400, 200, 128, center=False)) + 1e-6)
  starts = np.array([0, 7, 30])  # in mel frames
  windows = np.stack([signal[s * 200: s * 200 + token_mel.PATCH_SAMPLES] for s in starts])
  got = np.asarray(token_mel.mel_patches(jnp.asarray(windows)))
  assert got.shape == (3, 32, 128)
  for i, s in enumerate(starts):
    np.testing.assert_allclose(got[i], whole[s:s + 32], rtol=1e-4, atol=1e-4)


def batch_for(config, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  b = state_lib.example_batch(config, batch_size)
  t = config.data.window
  b['faces'] = rng.integers(0, 256, b['faces'].shape).astype(np.uint8)
  b['audio'] = rng.normal(size=b['audio'].shape).astype(np.float32)
  b['audio_offsets'] = np.tile((np.arange(t) * 1600).astype(np.int32), (batch_size, 1))
  b['mask'][1, 3:] = False
  b['face_mask'] = b['mask'].copy()
  b['face_mask'][0, 1] = False
  return b


@pytest.fixture(scope='module')
def smoke_model():
  config = sparse_e2e.get_config('smoke')
  config.model.update(capacity=1.0, top_p_warmup_steps=0)  # pruning at top_p from the first step
  batch = batch_for(config, 2)
  model = systems.build_model(config.model, config.compat)
  variables = jax.jit(lambda k: model.init({'params': k}, batch, train=False))(jax.random.key(0, impl='unsafe_rbg'))
  return config, batch, variables


def apply_fn(config, impl, train):
  config = config.copy_and_resolve_references()
  config.model.sparse_impl = impl
  model = systems.build_model(config.model, config.compat)
  def run(v, b):
    out = model.apply(v, b, train=train, rngs={'dropout': jax.random.key(1)},
                      mutable=['batch_stats', 'intermediates'] if train else False)
    return (out[0]['va'], out[1]) if train else out['va']

  return jax.jit(run)


def test_gather_model_equals_masked_dense_model_when_capacity_holds_every_site(smoke_model):
  config, batch, variables = smoke_model
  (a, upd_a), (b, upd_b) = (apply_fn(config, impl, True)(variables, batch) for impl in ('masked_dense', 'gather'))
  assert a.shape == (2, config.data.window, 2) and np.all(np.abs(np.asarray(a)) < 1)
  np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6), upd_a, upd_b)
  keep = jax.tree.leaves(upd_a['intermediates'])
  assert all(0 < float(k) < 1 for k in keep)  # top_p 0.8 prunes, the top site is always kept


def test_padding_does_not_change_valid_frames(smoke_model):
  config, batch, variables = smoke_model
  run = apply_fn(config, 'masked_dense', False)
  other = dict(batch, faces=batch['faces'].copy())
  other['faces'][1, 3:] = 255 - other['faces'][1, 3:]
  a, b = np.asarray(run(variables, batch)), np.asarray(run(variables, other))
  np.testing.assert_allclose(a[1, :3], b[1, :3], rtol=1e-5, atol=1e-6)  # the valid tokens


def test_trunk_macs_match_the_spec_layer_table():
  video = sparse_stages.trunk_macs((48, 48, 3), width=64, mlp_hidden=1024, d_model=64)
  audio = sparse_stages.trunk_macs((128, 32, 1), width=64, mlp_hidden=1024, d_model=64)
  # spec sparse_e2e §4: dense part, each sparse stage, flatten MLP (M MACs)
  assert video['low_level'] / 1e6 == pytest.approx(96.0, abs=0.05)
  assert [s / 1e6 for s in video['stages']] == pytest.approx([127.4] * 3, abs=0.05)
  assert video['mlp'] / 1e6 == pytest.approx(4.78, abs=0.01)
  assert audio['low_level'] / 1e6 == pytest.approx(157.5, abs=0.05)
  assert [s / 1e6 for s in audio['stages']] == pytest.approx([226.5] * 3, abs=0.05)
  half = sparse_stages.trunk_macs((48, 48, 3), width=64, mlp_hidden=1024, d_model=64, keep=(0.5, 0.5, 0.5))
  assert half['stages'][0] == pytest.approx(video['stages'][0] / 2)
  assert half['total'] == pytest.approx(video['total'] - sum(video['stages']) / 2 + sum(half['scorers']))


def test_trunk_macs_count_what_xla_counts_for_a_gather_block():
  n, h, w, c, f, k = 4, 8, 8, 6, 10, 20
  block = sparse_stages.VggBlock(f, 'gather')
  x, active = jnp.zeros((n, h, w, c)), jnp.ones((n, h, w), bool)
  slots = (jnp.tile(jnp.arange(k, dtype=jnp.int32), (n, 1)), jnp.ones((n, k), bool))
  variables = block.init(jax.random.key(0), x, active, jnp.ones((n,), bool), train=False, slots=slots)
  fwd = jax.jit(lambda v: block.apply(v, x, active, jnp.ones((n,), bool), train=False, slots=slots))
  flops = fwd.lower(variables).compile().cost_analysis()['flops']
  matmul_flops = 2 * n * k * 9 * (c * f + f * f)
  assert matmul_flops <= flops < 1.2 * matmul_flops  # the matmuls dominate; no dense convolution hides in it


@pytest.mark.parametrize('field,value,message', [
    ('model.token_rate_hz', 0.0, 'config.model.token_rate_hz'),
    ('data.image_size', 40, 'config.data.image_size=40'),
    ('model.top_p', 0.0, 'config.model.top_p'),
    ('model.capacity', 1.5, 'config.model.capacity'),
    ('model.sparse_impl', 'scn', 'config.model.sparse_impl'),
    ('model.query', 'text', 'config.model.query'),
])
def test_bad_sparse_config_value_names_the_field(field, value, message):
  config = sparse_e2e.get_config('smoke')
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    config_validation.validate(config)
    systems.build_model(config.model, config.compat)


def test_smoke_run_trains_and_evaluates(tiny_tree, tmp_path):
  config = sparse_e2e.get_config('smoke,gather')
  config.data.manual_dir = str(tiny_tree)
  config.data.records_dir = str(tmp_path / 'records')
  config.train.update(num_steps=3, eval_every=3, checkpoint_every=3)
  config.model.top_p_warmup_steps = 2  # two masked-dense warm-up steps, then a gather step
  results = loop.train_and_evaluate(config, tmp_path / 'run')
  metrics = json.loads((tmp_path / 'run' / 'eval' / 'validation' / 'metrics.json').read_text())
  assert metrics == pytest.approx(results['validation'])
  records = records_lib.open_records(prepare.input_dir(config), 'validation')
  annotated = sum(int(records.source[v.first_record + k]['label_mask'].sum()) for v in records.videos
                  for k in range(v.num_chunks))
  assert np.isfinite(metrics['ccc_mean']) and metrics['num_frames'] == annotated  # every frame, from tokens
  assert list((tmp_path / 'run' / 'predictions' / 'validation').glob('*.txt'))


def test_anneal_from_one_follows_the_linear_schedule():
  for step in range(8):
    expected = 1.0 - (1.0 - 0.6) * min(step / 5, 1.0)
    assert float(sparse_stages.anneal_from_one(0.6, 5, jnp.asarray(step))) == pytest.approx(expected, abs=1e-7)
  assert float(sparse_stages.anneal_from_one(0.6, 0, jnp.asarray(0))) == pytest.approx(0.6)


def test_top_p_warmup_starts_unpruned_counts_train_steps_and_ends_at_the_target(smoke_model):
  config, batch, variables = smoke_model
  config = config.copy_and_resolve_references()
  config.model.update(top_p=0.5, top_p_warmup_steps=4)
  model = systems.build_model(config.model, config.compat)
  shapes = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, batch, train=False))
  assert shapes['batch_stats']['train_steps'].shape == ()
  warm = apply_fn(config, 'masked_dense', True)
  keep_at = {}
  for steps in (0, 2, 4, 9):
    v = dict(variables, batch_stats=dict(variables['batch_stats'], train_steps=jnp.int32(steps)))
    _, upd = warm(v, batch)
    assert int(upd['batch_stats']['train_steps']) == steps + 1  # counted in train mode
    keep_at[steps] = np.array(jax.tree.leaves(upd['intermediates']), np.float64)
  np.testing.assert_array_equal(keep_at[0], 1.0)  # step 0: top_p 1, nothing pruned
  assert np.all(keep_at[2] <= 1.0) and np.all(keep_at[4] <= keep_at[2]) and keep_at[4].min() < keep_at[2].min()
  np.testing.assert_array_equal(keep_at[9], keep_at[4])  # the target from the end of the warm-up on


def test_masked_dense_trunk_with_a_capacity_equals_the_gather_trunk(train=True):
  rng = np.random.default_rng(3)
  f = jnp.asarray(rng.normal(size=(4, 8, 8, 2)), jnp.float32)
  query = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
  valid = jnp.asarray([True, True, False, True])
  trunk = lambda impl: SparseVggTrunk(width=2, d_model=3, mlp_hidden=5, impl=impl, capacity=0.3)
  variables = trunk('gather').init(jax.random.key(0), f, query, valid, train=False, top_p=0.9)
  run = lambda impl, **kw: jax.jit(lambda v: trunk(impl).apply(v, f, query, valid, train=train, top_p=0.9, **kw,
                                                              mutable=['batch_stats', 'intermediates']))(variables)
  (a, upd_a), (b, upd_b) = run('masked_dense', capacity=jnp.float32(0.3)), run('gather')
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6), upd_a, upd_b)
  caps = [sparse_stages.capacity(0.3, s, s) / s ** 2 for s in (8, 4, 2)]  # ⌈0.3·H·W⌉ sites of each stage's grid
  assert all(float(k) <= c + 1e-6 for k, c in zip(jax.tree.leaves(upd_a['intermediates']), caps))


def test_gather_models_warm_up_with_masked_dense_stages():
  config = sparse_e2e.get_config('smoke,gather')
  model = systems.build_model(config.model, config.compat)
  warm, steps = systems.warmup_model(model, config.model)
  assert warm.warmup_phase and not model.warmup_phase and steps == config.model.top_p_warmup_steps
  assert warm.clone(warmup_phase=False) == model
  config.model.sparse_impl = 'masked_dense'  # annealed within one step function: no separate warm-up
  assert systems.warmup_model(systems.build_model(config.model, config.compat), config.model) is None
