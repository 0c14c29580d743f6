"""The Karas et al. study's pieces beyond the cross-modal model: self-attention fusion, heads, the auxiliary
loss, freezing and two-stage fine-tuning, pretrained checkpoints."""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from affjax import config_validation, parallel, systems
from affjax.models import attention, converters, temporal, torch_convert
from affjax.models.backbones.audio1d import AUDIO_CNN_TABLES
from affjax.models.layers import sinusoidal_pe
from affjax.systems.audio_visual import model as av_model
from affjax.systems.audio_visual.lstm import LSTMFusion
from affjax.systems.audio_visual.self_attn import SelfAttentionFusion
from affjax.train import losses, optim, state as state_lib, step as step_lib
from configs import cross_attn, lstm, self_attn

KEY = jax.random.key(0, impl='unsafe_rbg')


# ----------------------------------------------------------------------------- self-attention fusion
def test_self_attention_fusion_matches_torch_transformer_encoder():
  """Dense + gelu + PE, then torch.nn.TransformerEncoderLayer (post-LN, exact GELU) x 2, then gelu."""
  torch = pytest.importorskip('torch')
  b, t, fa, fv, d, d_ff, heads = 2, 5, 6, 10, 16, 12, 2
  rng = np.random.default_rng(0)
  audio, visual = rng.standard_normal((b, t, fa)).astype(np.float32), rng.standard_normal((b, t, fv)).astype(np.float32)
  mask = np.ones((b, t), bool)
  mask[1, 3:] = False
  project = torch.nn.Linear(fa + fv, d)
  layers = [torch.nn.TransformerEncoderLayer(d, heads, d_ff, dropout=0.0, activation='gelu', batch_first=True)
            for _ in range(2)]
  with torch.no_grad():
    x = torch.nn.functional.gelu(project(torch.tensor(np.concatenate([audio, visual], -1))))
    x = x + torch.tensor(sinusoidal_pe(t, d))
    for layer in layers:
      layer.eval()
      x = layer(x, src_key_padding_mask=torch.tensor(~mask))
    expected = torch.nn.functional.gelu(x).numpy()

  t2n = lambda p: p.detach().numpy()
  mha = lambda m: attention.from_torch(torch_convert.StateDictReader({k: v.numpy() for k, v in m.state_dict().items()}),
                                       heads)
  dense = lambda m: {'kernel': t2n(m.weight).T, 'bias': t2n(m.bias)}
  norm = lambda m: {'scale': t2n(m.weight), 'bias': t2n(m.bias)}
  params = {'project': dense(project)}
  for i, layer in enumerate(layers):
    params[f'self_{i}'] = {'attn': mha(layer.self_attn), 'norm_attn': norm(layer.norm1), 'ffn_in': dense(layer.linear1),
                           'ffn_out': dense(layer.linear2), 'norm_ffn': norm(layer.norm2)}
  model = SelfAttentionFusion(d_embedding=d, d_ff=d_ff, num_heads=heads, num_layers=2, dropout=0.3)
  init = jax.eval_shape(functools.partial(model.init, train=False), KEY, audio, visual, mask)['params']
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, init)
  out = np.asarray(jax.jit(functools.partial(model.apply, train=False))({'params': params}, audio, visual, mask))
  np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('bidirectional', [False, True])
def test_lstm_fusion_matches_torch_per_sequence(bidirectional):
  """Dense + gelu, then torch.nn.LSTM (2 layers) run on each sequence's real frames only."""
  torch = pytest.importorskip('torch')
  b, t, fa, fv, d = 2, 6, 5, 7, 8
  rng = np.random.default_rng(7)
  audio, visual = rng.standard_normal((b, t, fa)).astype(np.float32), rng.standard_normal((b, t, fv)).astype(np.float32)
  mask = np.ones((b, t), bool)
  mask[1, 4:] = False
  project, lstm = torch.nn.Linear(fa + fv, d), torch.nn.LSTM(d, d, 2, batch_first=True, bidirectional=bidirectional)
  params = {'project': {'kernel': project.weight.detach().numpy().T, 'bias': project.bias.detach().numpy()},
            'lstm': temporal.from_torch(torch_convert.StateDictReader(
                {k: v.numpy() for k, v in lstm.state_dict().items()}))['params']}
  model = LSTMFusion(d_embedding=d, num_layers=2, bidirectional=bidirectional, dropout=0.3)
  init = jax.eval_shape(functools.partial(model.init, train=False), KEY, audio, visual, mask)['params']
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, init)
  out = np.asarray(jax.jit(functools.partial(model.apply, train=False))({'params': params}, audio, visual, mask))
  assert out.shape == (b, t, d * (2 if bidirectional else 1))
  with torch.no_grad():
    for i in range(b):
      n = int(mask[i].sum())
      x = torch.nn.functional.gelu(project(torch.tensor(np.concatenate([audio, visual], -1)[i:i + 1, :n])))
      np.testing.assert_allclose(out[i, :n], lstm(x)[0][0].numpy(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- heads and losses
def test_va_head_with_bins_is_the_softmax_expectation():
  x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
  head = av_model.VAHead(num_bins=5)
  params = jax.jit(head.init)(KEY, x)
  out = np.asarray(head.apply(params, x))
  logits = x.astype(np.float64) @ np.asarray(params['params']['dense']['kernel'], np.float64) + np.asarray(
      params['params']['dense']['bias'], np.float64)
  logits = logits.reshape(2, 3, 2, 5)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(out, p @ np.linspace(-1, 1, 5), rtol=1e-5, atol=1e-6)
  assert out.shape == (2, 3, 2) and np.abs(out).max() <= 1


def _reference_class(v: float, a: float) -> int:
  """The spec's discretisation, written as loops over the bin edges."""
  pi = 3.1416

  def bucket(x, edges):
    return sum(1 for e in edges if e < x) - 1

  sector = bucket(math.atan2(a, v), [-pi + 2 * pi * i / 8 for i in range(9)])
  ring = bucket(math.sqrt(v * v + a * a), [math.sqrt(2) * i / 3 for i in range(4)])
  return min(max(sector, 0), 7) + 8 * min(max(ring, 0), 2)


def test_discretise_va_matches_the_spec_loops():
  rng = np.random.default_rng(2)
  labels = np.concatenate([rng.uniform(-1, 1, (200, 2)), [[0, 0], [1, 1], [-1, -1], [-1, 0], [0.5, 0], [0, -0.3]]])
  got = np.asarray(losses.discretise_va(jnp.asarray(labels, jnp.float32)))
  expected = [_reference_class(v, a) for v, a in labels.astype(np.float32).astype(np.float64)]
  np.testing.assert_array_equal(got, expected)
  assert got[200] == 3  # (0, 0): sector 3, ring -1 clamped to 0 (the reference gives class 3 - 8, bug 12)
  assert set(got) <= set(range(24)) and len(set(got)) > 16


def test_weighted_cross_entropy_matches_torch_on_the_masked_frames():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(3)
  logits, classes = rng.standard_normal((2, 6, 24)).astype(np.float32), rng.integers(0, 24, (2, 6))
  mask = rng.uniform(size=(2, 6)) > 0.3
  got = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(classes), jnp.asarray(mask))
  expected = torch.nn.functional.cross_entropy(torch.tensor(logits[mask]), torch.tensor(classes[mask]),
                                               weight=torch.tensor(losses.AUX_CLASS_WEIGHTS))
  np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)


def test_model_loss_aux_term_and_arousal_compat():
  rng = np.random.default_rng(4)
  labels = jnp.asarray(rng.uniform(-1, 1, (2, 8, 2)), jnp.float32)
  out = {'va': jnp.asarray(rng.uniform(-1, 1, (2, 8, 2)), jnp.float32),
         'cat': jnp.asarray(rng.standard_normal((2, 8, 24)), jnp.float32)}
  mask = jnp.asarray(rng.uniform(size=(2, 8)) > 0.2)
  cfg = ml_collections.ConfigDict(dict(ccc_weights=(0.375, 0.125), mse_weight=0.5, aux_weight=0.7, per_window=False))
  loss, aux = losses.model_loss(out, labels, mask, cfg)
  ccc_v = float(losses.masked_ccc(out['va'][..., 0], labels[..., 0], mask))
  ccc_a = float(losses.masked_ccc(out['va'][..., 1], labels[..., 1], mask))
  ce = float(losses.weighted_cross_entropy(out['cat'], losses.discretise_va(labels), mask))
  mse = float(np.mean([losses.masked_mse(out['va'][..., d], labels[..., d], mask) for d in range(2)]))
  np.testing.assert_allclose(float(loss), 0.375 * (1 - ccc_v) + 0.125 * (1 - ccc_a) + 0.5 * mse + 0.7 * ce, rtol=1e-5)
  np.testing.assert_allclose(float(aux['aux_ce']), ce, rtol=1e-6)
  _, compat = losses.model_loss(out, labels, mask, cfg, compat_arousal_ccc_on_cat_logit=True)
  np.testing.assert_allclose(float(compat['ccc_arousal']),
                             float(losses.masked_ccc(out['cat'][..., 1], labels[..., 1], mask)), rtol=1e-6)
  np.testing.assert_allclose(float(compat['ccc_valence']), ccc_v, rtol=1e-6)
  np.testing.assert_allclose(float(compat['mse']), mse, rtol=1e-6)  # MSE still scores the V/A head


# ----------------------------------------------------------------------------- freezing, fine-tuning
def _audio_config(variant: str):
  config = self_attn.get_config('smoke,audio,aux' + variant)
  config.model.audio_backbone = 'emo18'  # the smallest backbone: the test is about what moves, not its size
  config.train.num_steps = 4
  return config


def _batch(config, b=4):
  rng = np.random.default_rng(5)
  batch = state_lib.example_batch(config, b)
  batch['audio'] = rng.uniform(-1, 1, batch['audio'].shape).astype(np.float32)
  batch['audio_offsets'] = np.tile(np.arange(config.data.window, dtype=np.int32) * 533, (b, 1))
  batch['labels'] = rng.uniform(-1, 1, (b, config.data.window, 2)).astype(np.float32)
  batch['label_mask'] = batch['face_mask'] = np.ones((b, config.data.window), bool)
  return batch


def _run_steps(config, num_steps: int):
  """Initial and final (params, batch_stats) of `num_steps` train steps on one device, switching to the
  unfrozen model at train.unfreeze_step as the loop does."""
  model, tx = systems.build_model(config.model, config.compat), optim.make_optimizer(config)
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
  state = state_lib.initial_state(model, tx, config, mesh, seed=0)
  first = jax.device_get((state.params, state.batch_stats))
  steps = [step_lib.make_train_step(model, tx, config), step_lib.make_train_step(model.clone(frozen=()), tx, config)]
  batch = _batch(config)
  history = []
  with jax.set_mesh(mesh):
    acc = jax.device_put(step_lib.zero_accumulator(), parallel.replicated(mesh))
    for i in range(num_steps):
      unfrozen = bool(config.train.unfreeze_step) and i >= config.train.unfreeze_step
      state, acc = steps[unfrozen](state, acc, parallel.to_global(batch, mesh))
      history.append(jax.device_get((state.params, state.batch_stats)))
  return first, history


def _same(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def test_frozen_backbone_is_bit_identical_after_steps_and_the_rest_trains():
  config = _audio_config(',frozen')
  assert tuple(config.model.frozen) == ('audio',)
  (p0, s0), history = _run_steps(config, 2)
  p2, s2 = history[-1]
  assert _same(p0['audio'], p2['audio']) and _same(s0['audio'], s2['audio'])
  assert not _same(p0['fusion'], p2['fusion']) and not _same(p0['va'], p2['va']) and not _same(p0['cat'], p2['cat'])


def test_finetune_unfreezes_the_backbone_at_the_lower_rate():
  config = _audio_config(',finetune')
  config.train.unfreeze_step = 2
  (p0, s0), history = _run_steps(config, 3)
  for params, stats in history[:2]:  # first stage: the backbone and its BatchNorm statistics are held
    assert _same(p0['audio'], params['audio']) and _same(s0['audio'], stats['audio'])
  p3, s3 = history[2]
  assert not _same(p0['audio'], p3['audio']) and not _same(s0['audio'], s3['audio'])
  # Fresh Adam moments for the backbone at unfreeze: its first update is lr * (1 + weight decay term) in size.
  step = np.abs(np.asarray(p3['audio']['conv0']['kernel']) - np.asarray(p0['audio']['conv0']['kernel']))
  assert step.max() <= config.optim.finetune_learning_rate * 1.01 + 1e-7
  schedule = optim.run_schedule(config)
  np.testing.assert_allclose(float(schedule(2)), config.optim.finetune_learning_rate)


def test_frozen_mask_labels_top_level_parts():
  config = _audio_config(',frozen')
  tx = optim.make_optimizer(config)
  params = {'audio': {'w': jnp.ones(3)}, 'fusion': {'w': jnp.ones(3)}}
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  np.testing.assert_array_equal(updates['audio']['w'], 0.0)
  assert np.all(np.asarray(updates['fusion']['w']) < 0)


# ----------------------------------------------------------------------------- pretrained checkpoints
def test_pretrained_checkpoint_round_trip_into_the_state(tmp_path):
  config = _audio_config('')
  model = systems.build_model(config.model, config.compat)
  abstract, _ = jax.eval_shape(lambda r: state_lib.init_variables(model, config, r), jax.random.key(0))
  rng = np.random.default_rng(6)
  converted = {c: jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), abstract[c]['audio'])
               for c in ('params', 'batch_stats')}
  path = str(tmp_path / 'emo18.msgpack')
  torch_convert.save_variables(path, converted)
  config.model.pretrained.audio = path
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
  state = state_lib.initial_state(model, optax.sgd(0.1), config, mesh, seed=0)
  assert _same(jax.device_get(state.params['audio']), converted['params'])
  assert _same(jax.device_get(state.batch_stats['audio']), converted['batch_stats'])

  wrong = dict(converted, params=dict(converted['params'], conv0={'kernel': np.zeros((3, 1, 16), np.float32),
                                                                   'bias': np.zeros(16, np.float32)}))
  torch_convert.save_variables(path, wrong)
  with pytest.raises(ValueError, match=r'emo18.msgpack \(config.model.pretrained.audio\) does not fit params/audio'):
    torch_convert.load_pretrained({'audio': path}, abstract)


def _end2you_state_dict(table, blocks: int, prefix: str = 'model.') -> dict[str, np.ndarray]:
  """Zero tensors with End2You `Base`'s names (`network.<2i>.0` conv, `network.<2i>.1` BatchNorm) for the first
  `blocks` blocks of `table`, plus the last block's BatchNorm (the tensor the converter locates the network by)."""
  sd, cin = {}, 1
  for i, blk in enumerate(table[:blocks]):
    sd[f'{prefix}network.{2 * i}.0.weight'] = np.zeros((blk.features, cin, blk.kernel_size), np.float32)
    sd[f'{prefix}network.{2 * i}.0.bias'] = np.zeros(blk.features, np.float32)
    cin = blk.features
  last = len(table) - 1
  for i in sorted({*range(blocks), last}):
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      sd[f'{prefix}network.{2 * i}.1.{name}'] = np.zeros(table[i].features, np.float32)
  return sd


def test_converter_names_missing_and_unused_tensors():
  table = AUDIO_CNN_TABLES['emo18']
  sd = _end2you_state_dict(table, 1)  # block 1's tensors are missing
  with pytest.raises(ValueError, match=r"ckpt.pth: emo18 .* needs tensor 'model.network.2.0.weight', which is missing; "
                                       r"unread tensors: model.network.4.1.bias, model.network.4.1.running_mean"):
    converters.convert('emo18', sd, 'ckpt.pth')
  sd = _end2you_state_dict(table, 3)
  sd['model.network.6.0.weight'] = np.zeros(3, np.float32)  # a fourth block: zhao19's, not emo18's
  with pytest.raises(ValueError, match=r"1 tensors under 'model.' were not converted to emo18: model.network.6.0.weight"):
    converters.convert('emo18', sd, 'ckpt.pth')
  del sd['model.network.6.0.weight']
  assert converters.convert_state_dict('emo18', sd, 'ckpt.pth').prefix == 'model.'
  with pytest.raises(ValueError, match=r"ckpt.pth has no zhao19 .*: no prefix P with tensors Pnetwork.0.0.weight and "
                                       r"Pnetwork.6.1.running_var; its top-level names are model"):
    converters.convert('zhao19', sd, 'ckpt.pth')
  wider = dict(sd, **{'model.network.0.0.weight': np.zeros((64, 1, 8), np.float32)})  # End2You's own emo18
  with pytest.raises(ValueError, match=r'network.0.0.weight is \(64, 1, 8\) \(out, in, kernel\), this network\'s '
                                       r'block 0 needs \(16, 1, 8\)'):
    converters.convert('emo18', wider, 'ckpt.pth')
  both = {**sd, **{k.replace('model.', 'teacher.', 1): v for k, v in sd.items()}}
  with pytest.raises(ValueError, match=r"holds 2 emo18 networks, under \['model.', 'teacher.'\]: choose one with"):
    converters.convert('emo18', both, 'ckpt.pth')
  assert converters.convert_state_dict('emo18', both, 'ckpt.pth', prefix='teacher.').outside_prefix == sorted(sd)


def test_lstm_config_builds_a_bidirectional_model():
  config = lstm.get_config('smoke')
  config.model.bidirectional = True
  model = systems.build_model(config.model, config.compat)
  batch = {k: v for k, v in state_lib.example_batch(config, 1).items()}
  shapes = jax.eval_shape(functools.partial(model.init, train=False), KEY, batch)['params']
  assert shapes['fusion']['lstm']['w_hh_l0'].shape == (2, 16, 64)  # two directions, hidden 16, 4 gates
  assert shapes['va']['dense']['kernel'].shape == (32, 2)  # the head reads both directions


@pytest.mark.parametrize('backbone, size, width', [('inceptionresnetv1', 112, 512), ('vggface2_resnet50', 224, 2048)])
def test_high_complexity_visual_backbones_feed_the_fusion(backbone, size, width):
  config = self_attn.get_config('smoke')
  config.model.visual_backbone, config.data.image_size = backbone, size
  model = systems.build_model(config.model, config.compat)
  out, variables = jax.eval_shape(functools.partial(model.init_with_output, train=False), KEY,
                                  state_lib.example_batch(config, 2))
  assert variables['params']['fusion']['project']['kernel'].shape == (128 + width, 16)  # Zhao19 + visual
  assert out['va'].shape == (2, config.data.window, 2)


@pytest.mark.parametrize('config_module', [lstm, self_attn, cross_attn])
def test_paper_recipe_validates_and_builds_at_full_size(config_module):
  """`:paper` (Recipe A at mid-grid values): a valid config whose model initialises, with the 4+4 cross-modal
  layers at width d / 2 = 64 (heads must divide it) and AdamW's warm restarts every 200 steps."""
  config = config_module.get_config('paper')
  config_validation.validate(config)
  model = systems.build_model(config.model, config.compat)
  out, variables = jax.eval_shape(functools.partial(model.init_with_output, train=False), KEY,
                                  state_lib.example_batch(config, 2))
  assert out['va'].shape == (2, config.data.window, 2)
  assert variables['params']['va']['dense']['kernel'].shape[0] == 128
  schedule = optim.run_schedule(config)
  assert float(schedule(200)) == pytest.approx(float(schedule(0)))  # a restart
  assert float(schedule(100)) == pytest.approx(float(schedule(0)) / 2)  # half way down the cosine


def test_variants_compose():
  config = self_attn.get_config('visual,finetune')
  assert tuple(config.model.modalities) == ('visual',) and tuple(config.model.frozen) == ('visual',)
  assert config.train.unfreeze_step == config.train.num_steps // 2
  with pytest.raises(ValueError, match='unknown config variant'):
    self_attn.get_config('smoke,lstm')
