"""LFAN building blocks: causal TCN (causality, receptive field, weight norm, PyTorch parity) and the
leader-follower fusion against a numpy float64 implementation of the spec's equations."""

import functools
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax.models import tcn
from affjax.systems.lfan.fusion import LeaderFollowerFusion

KEY = jax.random.key(0, impl='unsafe_rbg')


def _init(model, *args, **kwargs):
  return jax.jit(functools.partial(model.init, **kwargs))(KEY, *args)


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ----------------------------------------------------------------------------- TCN
def test_tcn_causal_with_receptive_field_121():
  """d y_t / d x_s is non-zero exactly for t - 120 <= s <= t (k = 5, 4 levels)."""
  net = tcn.TemporalConvNet((6, 6, 6, 4), kernel_size=5)
  x = np.random.default_rng(0).standard_normal((1, 260, 3)).astype(np.float32)
  variables = _init(net, x, train=False)
  t = 200
  grad = jax.jit(jax.grad(lambda x: net.apply(variables, x, train=False)[0, t].sum()))(x)
  touched = np.flatnonzero(np.abs(np.asarray(grad[0])).sum(-1) > 0)
  assert tcn.receptive_field(5, 4) == 121
  np.testing.assert_array_equal(touched, np.arange(t - 120, t + 1))


def test_tcn_output_never_depends_on_later_frames():
  net = tcn.TemporalConvNet((8, 8), kernel_size=3, dropout=0.0)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 40, 5)).astype(np.float32)
  variables = _init(net, x, train=False)
  apply = jax.jit(functools.partial(net.apply, train=False))
  y = np.asarray(apply(variables, x))
  x2 = x.copy()
  x2[:, 25:] = rng.standard_normal(x2[:, 25:].shape)
  y2 = np.asarray(apply(variables, x2))
  np.testing.assert_array_equal(y[:, :25], y2[:, :25])
  assert np.abs(y[:, 25:] - y2[:, 25:]).max() > 1e-3


def _direct_causal_conv(x, v, g, b, dilation):
  """float64 loops: y[t, o] = b[o] + sum_j sum_c x[t - (k-1-j) d, c] W[j, c, o], W = g v / ||v||."""
  k, c_in, c_out = v.shape
  w = np.empty_like(v)
  for o in range(c_out):
    w[:, :, o] = g[o] * v[:, :, o] / np.sqrt((v[:, :, o] ** 2).sum())
  y = np.tile(b, (x.shape[0], x.shape[1], 1))
  for t in range(x.shape[1]):
    for j in range(k):
      s = t - (k - 1 - j) * dilation
      if s >= 0:
        y[:, t] += x[:, s] @ w[j]
  return y


def test_weight_norm_conv_matches_direct_formula_and_starts_at_g_equal_norm():
  conv = tcn.WeightNormCausalConv(4, kernel_size=3, dilation=2)
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 11, 3)).astype(np.float32)
  params = _init(conv, x)['params']
  v = np.asarray(params['v'], np.float64)
  np.testing.assert_allclose(np.asarray(params['g']), np.sqrt((v ** 2).sum(axis=(0, 1))), rtol=1e-6)
  bound = 1 / np.sqrt(3 * 3)  # PyTorch Conv1d default U(+-1/sqrt(C_in k))
  assert np.abs(v).max() <= bound and np.abs(np.asarray(params['bias'])).max() <= bound
  params = dict(params, g=rng.uniform(0.5, 2.0, 4).astype(np.float32))  # away from g = ||v||
  y = np.asarray(conv.apply({'params': params}, x))
  ref = _direct_causal_conv(x.astype(np.float64), v, np.asarray(params['g'], np.float64),
                            np.asarray(params['bias'], np.float64), 2)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_channel_dropout_drops_whole_channels_per_window():
  """Each dropout output is zero for whole (window, channel) columns: all frames or none."""
  block = tcn.TemporalBlock(16, kernel_size=3, dilation=1, dropout=0.5)
  x = np.random.default_rng(3).standard_normal((3, 20, 16)).astype(np.float32)
  variables = _init(block, x, train=False)
  _, state = block.apply(variables, x, train=True, rngs={'dropout': jax.random.key(3, impl='unsafe_rbg')},
                         capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Dropout), mutable=['intermediates'])
  outs = [np.asarray(o) for o in jax.tree.leaves(state['intermediates'])]
  assert len(outs) == 2
  for out in outs:
    dropped = out == 0
    np.testing.assert_array_equal(dropped, np.broadcast_to(dropped[:, :1], dropped.shape))
    assert 0.2 < dropped[:, 0].mean() < 0.8


def test_tcn_matches_pytorch():
  """The same TCN in PyTorch (tools/torch_lfan.py: weight_norm Conv1d, pad both sides + chomp, 1x1 residual)."""
  torch = pytest.importorskip('torch')
  torch_lfan = _torch_lfan()
  channels, k = (8, 8, 6), 3
  torch.manual_seed(0)
  blocks = torch_lfan.TemporalConvNet(5, channels, k).eval()
  x = np.random.default_rng(4).standard_normal((2, 30, 5)).astype(np.float32)
  ref = blocks(torch.from_numpy(x).transpose(1, 2)).transpose(1, 2).detach().numpy()
  net = tcn.TemporalConvNet(channels, kernel_size=k)
  y = net.apply({'params': torch_lfan.tcn_params(blocks)}, x, train=False)
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def _torch_lfan():
  sys.path.insert(0, 'tools')
  import torch_lfan  # pylint: disable=g-import-not-at-top
  return torch_lfan


# ----------------------------------------------------------------------------- fusion
def _np_fusion(params, leader, followers, compat=False):
  """float64 per-frame implementation of spec lfan 2.3, one frame at a time."""
  p = _np(params)
  dense = lambda name, x: x @ p[name]['kernel'] + p[name]['bias']
  out = []
  for n in range(leader.shape[0]):
    hs = [leader[n]] + [f[n] for f in followers]
    ks = [dense(f'key{m}', h) for m, h in enumerate(hs)]
    src = [h if (m == 0 or not compat) else ks[m] for m, h in enumerate(hs)]
    qs = [dense(f'query{m}', s) for m, s in enumerate(src)]
    vs = [dense(f'value{m}', s) for m, s in enumerate(src)]
    K, Q, V = np.stack(ks), np.stack(qs), np.stack(vs)
    logits = K @ Q.T / np.sqrt(K.shape[1])
    A = np.exp(logits - logits.max(1, keepdims=True))
    A /= A.sum(1, keepdims=True)
    Z = A @ V + V
    F = (Z - Z.mean()) / np.sqrt(Z.var() + 1e-5) * p['norm']['scale'] + p['norm']['bias']
    out.append(np.concatenate([leader[n], F.reshape(-1)]))
  return np.stack(out)


@pytest.mark.parametrize('compat', [False, True])
def test_leader_follower_fusion_matches_numpy(compat):
  rng = np.random.default_rng(5)
  leader = rng.standard_normal((2, 3, 12))
  followers = [rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 3, 8))]
  fusion = LeaderFollowerFusion(d=8, compat_follower_qv_from_key=compat)
  args = [leader.astype(np.float32), [f.astype(np.float32) for f in followers]]
  params = _init(fusion, *args)['params']
  assert params['norm']['scale'].shape == (3, 8)
  # non-trivial LayerNorm affine parameters
  params = dict(params, norm={'scale': rng.uniform(0.5, 1.5, (3, 8)), 'bias': rng.standard_normal((3, 8))})
  out = np.asarray(fusion.apply({'params': params}, *args))
  assert out.shape == (2, 3, 12 + 3 * 8)
  ref = _np_fusion(params, leader.reshape(6, 12), [f.reshape(6, 8) for f in followers], compat)
  np.testing.assert_allclose(out.reshape(6, -1), ref, rtol=1e-5, atol=1e-5)
  if compat:  # the flag changes the result
    plain = np.asarray(LeaderFollowerFusion(d=8).apply({'params': params}, *args))
    assert np.abs(plain - out).max() > 1e-3


def test_fusion_parameter_count_matches_spec():
  """Fusion + regressor of the paper's model: 19 137 parameters (spec lfan 2.3)."""
  fusion = LeaderFollowerFusion(d=32)
  params = jax.eval_shape(lambda: fusion.init(KEY, jnp.zeros((1, 128)), [jnp.zeros((1, 32))] * 2))['params']
  regressor = (128 + 96) * 1 + 1
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) + regressor == 19137


def test_lfan_matches_pytorch_with_converted_weights():
  """The whole model (small IR-50 at 16 x 16, VGGish and MFCC followers, MFCC computed from the window's audio) in
  evaluation mode against tools/torch_lfan.py with the same weights."""
  torch = pytest.importorskip('torch')
  torch_lfan = _torch_lfan()
  from affjax import systems  # pylint: disable=g-import-not-at-top
  from configs import lfan  # pylint: disable=g-import-not-at-top
  config = lfan.get_config('smoke')
  config.model.update(visual_channels=(16, 12), follower_channels=(8, 6), fusion_dim=8)
  config.model.feature_norm.update(vggish=(0.0, 1.0), mfcc=(0.0, 1.0))
  config.train.batch_size = 2
  m = config.model
  torch.manual_seed(0)
  net = torch_lfan.LFAN(tuple(m.ir50_units), config.data.crop_size, 3, tuple(m.visual_channels),
                        tuple(m.follower_channels), m.kernel_size, m.tcn_dropout, m.fusion_dim).eval()
  with torch.no_grad():  # non-trivial BatchNorm statistics
    for mod in net.modules():
      if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
        mod.running_mean.uniform_(-0.2, 0.2)
        mod.running_var.uniform_(0.5, 1.5)
  batch = torch_lfan.random_batch(config)
  with torch.no_grad():
    ref = net({k: torch.from_numpy(v.astype(np.int64) if k == 'audio_offsets' else v) for k, v in batch.items()})
  variables = torch_lfan.flax_variables(net)
  model = systems.build_model(config.model, config.compat)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, batch)['va']
  assert out.shape == (2, config.data.window, 2)
  np.testing.assert_allclose(np.asarray(out), ref.numpy(), rtol=1e-4, atol=1e-4)
