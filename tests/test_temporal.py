"""The LSTM of affjax.models.temporal against a step-by-step numpy float64 LSTM and torch.nn.LSTM."""
import functools

import jax
import numpy as np
import pytest

from affjax.models import temporal
from affjax.models.torch_convert import StateDictReader

KEY = jax.random.key(0, impl='unsafe_rbg')
B, T, D, H = 3, 6, 5, 4
LENGTHS = np.array([6, 4, 1])  # right padding


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def numpy_lstm(params, x, mask, num_layers, directions, initial_state=None):
  """float64 reference: loops over layers, directions, sequences and frames; a masked frame keeps the state
  and outputs 0; the backward direction visits frames T-1 ... 0."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  x = np.asarray(x, np.float64)
  if initial_state is not None:
    s = np.asarray(initial_state, np.float64).reshape(2, num_layers, directions, -1)
  for layer in range(num_layers):
    out = np.zeros(x.shape[:2] + (directions, H))
    for d in range(directions):
      w_ih, w_hh, bias = p[f'w_ih_l{layer}'][d], p[f'w_hh_l{layer}'][d], p[f'bias_l{layer}'][d]
      for b in range(x.shape[0]):
        h, c = (s[0, layer, d].copy(), s[1, layer, d].copy()) if initial_state is not None else (np.zeros(H),) * 2
        for t in (range(x.shape[1]) if d == 0 else reversed(range(x.shape[1]))):
          if not mask[b, t]:
            continue
          z = x[b, t] @ w_ih + h @ w_hh + bias
          i, f, g, o = _sigmoid(z[:H]), _sigmoid(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), _sigmoid(z[3 * H:])
          c = f * c + i * g
          h = o * np.tanh(c)
          out[b, t, d] = h
    x = out.reshape(x.shape[0], x.shape[1], directions * H)
  return x


def _inputs():
  x = np.random.default_rng(0).standard_normal((B, T, D)).astype(np.float32)
  return x, np.arange(T)[None, :] < LENGTHS[:, None]


@pytest.mark.parametrize('bidirectional', [False, True])
def test_lstm_matches_numpy_with_padding(bidirectional):
  x, mask = _inputs()
  model = temporal.LSTM(H, num_layers=2, bidirectional=bidirectional)
  params = jax.jit(functools.partial(model.init, train=False))(KEY, x, mask)['params']
  out = np.asarray(jax.jit(functools.partial(model.apply, train=False))({'params': params}, x, mask))
  assert out.shape == (B, T, (2 if bidirectional else 1) * H)
  expected = numpy_lstm(params, x, mask, 2, 2 if bidirectional else 1)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  assert not out[~mask].any()  # padded frames output zeros


def test_learned_initial_state_layout():
  """Rows [0, L*K) of `initial_state` are h0 and the rest c0, row index 2 * layer + direction."""
  x, mask = _inputs()
  model = temporal.LSTM(H, num_layers=2, bidirectional=True, learned_initial_state=True)
  params = jax.jit(functools.partial(model.init, train=False))(KEY, x, mask)['params']
  state = np.asarray(params['initial_state'])
  assert state.shape == (8, H)
  bound = np.sqrt(6 / (8 + H))  # Xavier uniform over [8, H]
  assert 0 < np.abs(state).max() <= bound
  out = np.asarray(model.apply({'params': params}, x, mask, train=False))
  np.testing.assert_allclose(out, numpy_lstm(params, x, mask, 2, 2, initial_state=state), rtol=1e-5, atol=1e-6)
  # A sequence whose first frame is padding starts from the learned state, not from zeros.
  zero_state = dict(params, initial_state=np.zeros_like(state))
  assert np.abs(out - np.asarray(model.apply({'params': zero_state}, x, mask, train=False))).max() > 1e-3


def test_torch_init_and_dropout_between_layers_only():
  x, mask = _inputs()
  model = temporal.LSTM(64, num_layers=2, dropout=0.5)
  params = jax.jit(functools.partial(model.init, train=False))(KEY, x, mask)['params']
  bound = 1 / np.sqrt(64)
  w = np.asarray(params['w_hh_l0'])
  assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
  assert np.abs(np.asarray(params['bias_l0'])).max() <= 2 * bound  # b_ih + b_hh
  apply = jax.jit(functools.partial(model.apply, train=True))
  a, b = (np.asarray(apply({'params': params}, x, mask, rngs={'dropout': jax.random.key(s, impl='unsafe_rbg')}))
          for s in (1, 2))
  assert np.abs(a - b).max() > 1e-3  # dropout acts in training
  eval_out = np.asarray(model.apply({'params': params}, x, mask, train=False))
  # No dropout after the last layer: a one-layer LSTM is deterministic in training.
  one = temporal.LSTM(64, dropout=0.5)
  one_params = {k: v for k, v in params.items() if k.endswith('_l0')}
  np.testing.assert_array_equal(
      np.asarray(one.apply({'params': one_params}, x, mask, train=True, rngs={'dropout': KEY})),
      np.asarray(one.apply({'params': one_params}, x, mask, train=False)))
  assert eval_out.shape == a.shape


@pytest.mark.parametrize('bidirectional', [False, True])
def test_lstm_matches_torch_with_converted_weights(bidirectional):
  torch = pytest.importorskip('torch')
  x, mask = _inputs()
  ref = torch.nn.LSTM(D, H, num_layers=2, bidirectional=bidirectional, batch_first=True).eval()
  with torch.no_grad():
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), torch.tensor(LENGTHS), batch_first=True,
                                                     enforce_sorted=False)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=T)
  sd = StateDictReader({k: v.numpy() for k, v in ref.state_dict().items()}, 'torch.nn.LSTM')
  variables = temporal.from_torch(sd)
  sd.check_all_used()
  model = temporal.LSTM(H, num_layers=2, bidirectional=bidirectional)
  abstract = jax.eval_shape(functools.partial(model.init, train=False), KEY, x, mask)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, abstract)
  out = np.asarray(model.apply(variables, x, mask, train=False))
  expected = expected.numpy()
  rel = np.abs(out - expected).max() / np.abs(expected).max()
  assert rel < 1e-5, rel


def test_from_torch_rejects_other_state_dicts():
  with pytest.raises(KeyError, match='weight_ih_l0'):
    temporal.from_torch(StateDictReader({'fc.weight': np.zeros((2, 2))}, 'ckpt.pt'))
