"""RJCA fusion: joint cross-attention (K = 1, 3) and audio-guided spatial attention against numpy float64
implementations of the spec's equations, the reference's scrambled layout, parameter counts."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax.systems.rjca import fusion as rjca

KEY = jax.random.key(0, impl='unsafe_rbg')


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _dense(p, x):
  return x @ p['kernel'] + p.get('bias', 0.0)


def _relu(x):
  return np.maximum(x, 0.0)


def numpy_joint_cross_attention(params, xv, xa, num_iterations):
  """Spec §3.5 per sample, iteration r with its own weights `iteration{r}`."""
  p = _f64(params)
  xv, xa = np.asarray(xv, np.float64), np.asarray(xa, np.float64)
  for r in range(num_iterations):
    q = p[f'iteration{r}']
    new = []
    for b in range(xv.shape[0]):
      joint = _dense(q['query'], np.concatenate([xv[b], xa[b]], -1))  # [L, 1024]
      updated = []
      for name, x in (('visual', xv[b]), ('audio', xa[b])):
        k = _dense(q[f'key_{name}'], x.T)  # [D, L]
        c = np.tanh(k @ joint / np.sqrt(joint.shape[-1]))  # [D, 1024]
        h = _relu(np.tanh(_dense(q[f'value_{name}'], x) @ c))  # [L, 1024]
        updated.append(x + _relu(_dense(q[f'out_{name}'], h)))
      new.append(updated)
    xv, xa = np.stack([u[0] for u in new]), np.stack([u[1] for u in new])
  return xv, xa


@pytest.mark.parametrize('num_iterations', [1, 3])
def test_joint_cross_attention_matches_numpy(num_iterations):
  rng = np.random.default_rng(num_iterations)
  b, length, d = 2, 5, 16
  xv, xa = (rng.standard_normal((b, length, d)).astype(np.float32) for _ in range(2))
  module = rjca.JointCrossAttention(num_iterations)
  params = jax.jit(functools.partial(module.init, train=False))(KEY, xv, xa)['params']
  assert sorted(params) == [f'iteration{r}' for r in range(num_iterations)]  # weights not shared
  out_v, out_a = jax.jit(functools.partial(module.apply, train=False))({'params': params}, xv, xa)
  ref_v, ref_a = numpy_joint_cross_attention(params, xv, xa, num_iterations)
  np.testing.assert_allclose(np.asarray(out_v), ref_v, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out_a), ref_a, rtol=1e-5, atol=1e-5)
  if num_iterations == 3:  # the iterations differ from applying the first one three times
    repeated = {f'iteration{r}': params['iteration0'] for r in range(3)}
    assert np.abs(numpy_joint_cross_attention(repeated, xv, xa, 3)[0] - ref_v).max() > 1e-3


def test_shared_iteration_weights_apply_one_layer_k_times():
  rng = np.random.default_rng(7)
  xv, xa = (rng.standard_normal((2, 4, 8)).astype(np.float32) for _ in range(2))
  module = rjca.JointCrossAttention(3, share_weights=True)
  params = module.init(KEY, xv, xa, train=False)['params']
  assert sorted(params) == ['iteration0']
  out_v, _ = module.apply({'params': params}, xv, xa, train=False)
  ref_v, _ = numpy_joint_cross_attention({f'iteration{r}': params['iteration0'] for r in range(3)}, xv, xa, 3)
  np.testing.assert_allclose(np.asarray(out_v), ref_v, rtol=1e-5, atol=1e-5)


def numpy_spatial_attention(p, visual, audio, on_position_axis):
  p = _f64(p)
  v = _relu(_dense(p['affine_video'], visual))  # [B, L, P, D]
  g = _relu(_dense(p['affine_audio'], audio))  # [B, L, D]
  out = np.zeros(visual.shape[:2] + (p['affine_feat']['kernel'].shape[1],))
  for b in range(visual.shape[0]):
    for t in range(visual.shape[1]):
      hv, ha = v[b, t] @ p['affine_v']['kernel'], g[b, t] @ p['affine_g']['kernel']  # [P, h], [h]
      content = hv + (ha[:, None] if on_position_axis else ha[None, :])
      z = (np.tanh(content) @ p['affine_h']['kernel'])[:, 0]
      alpha = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
      out[b, t] = _dense(p['affine_feat'], alpha @ visual[b, t])
  return out


@pytest.mark.parametrize('on_position_axis', [False, True])
def test_audio_guided_spatial_attention_matches_numpy(on_position_axis):
  rng = np.random.default_rng(3)
  visual = rng.standard_normal((2, 3, 6, 8))  # 6 positions x 8 channels
  audio = rng.standard_normal((2, 3, 5))
  module = rjca.AudioGuidedSpatialAttention(features=8, hidden=6, compat_audio_on_position_axis=on_position_axis)
  params = module.init(KEY, visual.astype(np.float32), audio.astype(np.float32))['params']
  out = np.asarray(module.apply({'params': params}, visual.astype(np.float32), audio.astype(np.float32)))
  np.testing.assert_allclose(out, numpy_spatial_attention(params, visual, audio, on_position_axis), rtol=1e-5,
                             atol=1e-5)
  other = np.asarray(rjca.AudioGuidedSpatialAttention(8, 6, not on_position_axis).apply(
      {'params': params}, visual.astype(np.float32), audio.astype(np.float32)))
  assert np.abs(other - out).max() > 1e-4  # the two layouts differ


def test_scrambled_view_reproduces_the_reference_reshape():
  """The reference views a `[N, 512, 1, 7, 7]` (C, T, H, W) layer-4 map as `[N, 49, 512]`."""
  torch = pytest.importorskip('torch')
  maps = np.random.default_rng(4).standard_normal((2, 512, 1, 7, 7)).astype(np.float32)
  reference = torch.tensor(maps).view(2, -1, 512).numpy()
  channels_last = maps.transpose(0, 2, 3, 4, 1).reshape(2, 49, 512)  # affjax: [N, positions, channels]
  np.testing.assert_array_equal(np.asarray(rjca.scrambled_spatial_view(channels_last)), reference)
  np.testing.assert_array_equal(channels_last[:, 10], maps[:, :, 0, 1, 3])  # the correct view: position (1, 3)


def _lstm_params(inputs, hidden, layers=2):
  """Parameters of torch's 2-layer BiLSTM (two biases per gate) and of affjax's (one)."""
  torch = sum(2 * (4 * hidden * (inputs if layer == 0 else 2 * hidden) + 4 * hidden * hidden + 8 * hidden)
              for layer in range(layers))
  return torch, torch - 2 * layers * 4 * hidden


def test_parameter_counts_match_the_spec():
  """Spec §3: 3.68 M per modality BLSTM block, 4.99 M joint block, 2.63 M co-attention (K = 1), 0.84 M
  spatial attention, 0.13 M heads (PyTorch counts b_ih and b_hh separately; affjax stores their sum)."""
  shapes = jax.eval_shape(functools.partial(rjca.RJCAFusion(num_iterations=1).init, train=False), KEY,
                          jax.ShapeDtypeStruct((1, 16, 512), jnp.float32),
                          jax.ShapeDtypeStruct((1, 16, 49, 512), jnp.float32))['params']
  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  blocks = (('audio_blstm', 512, 3.68e6), ('visual_blstm', 512, 3.68e6), ('joint_blstm', 1024, 4.99e6))
  for block, inputs, spec in blocks:
    torch_lstm, ours_lstm = _lstm_params(inputs, 256)
    extra = 8 * 256 + (inputs + 512) * 512 + 512  # initial states, linear
    assert count(shapes[block]) == ours_lstm + extra
    assert abs(torch_lstm + extra - spec) < 0.01e6
  assert abs(count(shapes['coattention']) - 2.63e6) < 0.01e6
  assert abs(count(shapes['spatial_attention']) - 0.84e6) < 0.01e6
  heads = sum(count(shapes[k]) for k in shapes if k.startswith(('valence', 'arousal')))
  assert abs(heads - 0.13e6) < 0.005e6


def test_fusion_shapes_dropout_and_padding():
  rng = np.random.default_rng(5)
  b, length = 2, 4
  audio = rng.standard_normal((b, length, 32)).astype(np.float32)
  visual = rng.standard_normal((b, length, 9, 32)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
  module = rjca.RJCAFusion(num_iterations=2, features=16)
  variables = module.init(KEY, audio, visual, mask, train=False)
  apply = jax.jit(module.apply, static_argnames='train')
  out = np.asarray(apply(variables, audio, visual, mask, train=False))
  assert out.shape == (b, length, 2) and np.isfinite(out).all()
  np.testing.assert_array_equal(out, np.asarray(apply(variables, audio, visual, mask, train=False)))
  dropped = np.asarray(apply(variables, audio, visual, mask, train=True, rngs={'dropout': KEY}))
  assert np.abs(dropped - out).max() > 1e-4
  # The input scale does not matter (L2 normalisation first).
  np.testing.assert_allclose(np.asarray(apply(variables, 3 * audio, 5 * visual, mask, train=False)), out,
                             rtol=1e-4, atol=1e-5)


def test_l2_normalize_is_pytorch_normalize_with_a_finite_gradient_at_zero():
  x = np.random.default_rng(6).standard_normal((3, 5)).astype(np.float32)
  x[1] = 0.0
  expected = x / np.maximum(np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True), 1e-12)
  np.testing.assert_allclose(np.asarray(rjca.l2_normalize(jnp.asarray(x))), expected, rtol=1e-6)
  grad = jax.grad(lambda x: (rjca.l2_normalize(x) * jnp.arange(5.0)).sum())(jnp.asarray(x))
  assert np.isfinite(np.asarray(grad)).all()


def test_clips_past_the_end_do_not_reach_the_predictions_of_the_others():
  """Their features (backbone outputs of empty inputs inline, zeros or anything in a cache) are replaced by
  zeros, so the existing clips' predictions and the parameter gradients do not depend on them."""
  from affjax import systems  # pylint: disable=g-import-not-at-top
  from configs import rjca as rjca_config  # pylint: disable=g-import-not-at-top
  config = rjca_config.get_config('smoke')
  model = systems.build_model(config.model, config.compat)
  rng = np.random.default_rng(7)
  mask = np.array([[True, True], [True, False]])
  batch = dict(visual_features=rng.standard_normal((2, 2, 4, 512)).astype(np.float32),
               audio_features=rng.standard_normal((2, 2, 512)).astype(np.float32), mask=mask)
  padded = dict(batch, visual_features=batch['visual_features'].copy(),
                audio_features=np.zeros((2, 2, 512), np.float32))
  padded['visual_features'][1, 1] = 0.0
  padded['audio_features'][~mask] = 0.0
  padded['audio_features'][mask] = batch['audio_features'][mask]
  variables = jax.jit(functools.partial(model.init, train=False))(KEY, batch)
  loss = lambda params, b: (model.apply({'params': params}, b, train=False)['va'] * mask[..., None]).sum()
  value_and_grad = jax.jit(jax.value_and_grad(loss))
  value, grads = value_and_grad(variables['params'], batch)
  padded_value, padded_grads = value_and_grad(variables['params'], padded)
  assert padded_value == pytest.approx(float(value), rel=1e-6)
  for got, expected in zip(jax.tree.leaves(padded_grads), jax.tree.leaves(grads)):
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
