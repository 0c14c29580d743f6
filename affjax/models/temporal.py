"""Temporal models over per-frame (or per-clip) features `[B, T, D]`: a multi-layer (Bi)LSTM.

The LSTM is PyTorch's `nn.LSTM` (gates i, f, g, o; one bias per gate = b_ih + b_hh; init U(+-1/sqrt(H)))
written as one `lax.scan` per layer: the input projection of every frame is one matmul before the scan,
and both directions of a bidirectional layer run in the same scan (the backward direction on the
time-reversed sequence, stacked on a leading direction axis).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax.models.layers import symmetric_uniform
from affjax.models.torch_convert import StateDictReader

Array = jax.Array


def _summed_uniform(bound: float):
  """Initialiser of a bias that is the sum of two U(-bound, bound) draws (PyTorch's b_ih + b_hh)."""
  draw = symmetric_uniform(bound)

  def init(key, shape, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    return draw(k1, shape, dtype) + draw(k2, shape, dtype)

  return init


def _scan_layer(xw: Array, w_hh: Array, mask: Array, h0: Array, c0: Array, unroll: int) -> Array:
  """The recurrence of one layer over all its directions.

  xw `[K, T, B, 4H]` (input projection + bias, per direction, in that direction's time order),
  w_hh `[K, H, 4H]`, mask `[K, T, B]`, h0/c0 `[K, B, H]` -> outputs `[K, T, B, H]` (0 at masked frames).
  """

  def step(carry, inputs):
    h, c = carry
    xw_t, m_t = inputs
    z = xw_t + jnp.einsum('kbh,khg->kbg', h, w_hh)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
    m = m_t[..., None]
    return (jnp.where(m, h_new, h), jnp.where(m, c_new, c)), jnp.where(m, h_new, 0.0)

  _, out = jax.lax.scan(step, (h0, c0), (jnp.swapaxes(xw, 0, 1), jnp.swapaxes(mask, 0, 1)), unroll=unroll)
  return jnp.swapaxes(out, 0, 1)


class LSTM(nn.Module):
  """`num_layers` stacked (bidirectional) LSTM layers: `[B, T, D]` -> `[B, T, H * directions]`.

  `mask` (`[B, T]` bool, optional): a masked frame leaves the state unchanged and outputs zeros, so
  the backward direction of a right-padded sequence starts at its last real frame.
  Parameters of layer k: `w_ih_l{k}` `[K, D_k, 4H]`, `w_hh_l{k}` `[K, H, 4H]`, `bias_l{k}` `[K, 4H]`
  (K = 2 directions if bidirectional, else 1; gates i, f, g, o). With `learned_initial_state`,
  `initial_state` `[2 * num_layers * K, H]`: rows `[0, num_layers * K)` are h0, the rest c0, row
  index `K * layer + direction` within each half (Xavier-uniform init); otherwise the state starts at 0.
  Dropout (`dropout`, training only) acts between layers, not after the last one.
  """

  hidden_size: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  learned_initial_state: bool = False
  unroll: int = 1

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, *, train: bool) -> Array:
    b, t, _ = x.shape
    h_size, k = self.hidden_size, 2 if self.bidirectional else 1
    if mask is None:
      mask = jnp.ones((b, t), bool)
    # [K, T, B]: the backward direction reads time reversed.
    dir_mask = jnp.stack([mask.T, mask.T[::-1]][:k])
    init = symmetric_uniform(1.0 / np.sqrt(h_size))
    if self.learned_initial_state:
      state = self.param('initial_state', nn.initializers.xavier_uniform(), (2 * self.num_layers * k, h_size))
      state = state.reshape(2, self.num_layers, k, 1, h_size)
      state = jnp.broadcast_to(state, (2, self.num_layers, k, b, h_size))
    else:
      state = jnp.zeros((2, self.num_layers, k, b, h_size), jnp.float32)
    x = x.astype(jnp.float32)
    for layer in range(self.num_layers):
      if layer > 0 and self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      w_ih = self.param(f'w_ih_l{layer}', init, (k, x.shape[-1], 4 * h_size))
      w_hh = self.param(f'w_hh_l{layer}', init, (k, h_size, 4 * h_size))
      bias = self.param(f'bias_l{layer}', _summed_uniform(1.0 / np.sqrt(h_size)), (k, 4 * h_size))
      xw = jnp.einsum('btd,kdg->ktbg', x, w_ih) + bias[:, None, None, :]
      if k == 2:
        xw = jnp.stack([xw[0], xw[1, ::-1]])
      out = _scan_layer(xw, w_hh, dir_mask, state[0, layer], state[1, layer], self.unroll)
      if k == 2:
        out = jnp.concatenate([out[0], out[1, ::-1]], axis=-1)
      else:
        out = out[0]
      x = jnp.swapaxes(out, 0, 1)
    return x


def from_torch(sd: StateDictReader, prefix: str = '') -> dict[str, dict]:
  """Params of `LSTM` from a `torch.nn.LSTM` state dict (`<prefix>weight_ih_l{k}[_reverse]`, ...);
  the number of layers and directions is read from the tensor names."""
  params = {}
  layer = 0
  while f'{prefix}weight_ih_l{layer}' in sd:
    suffixes = ('', '_reverse') if f'{prefix}weight_ih_l{layer}_reverse' in sd else ('',)
    tensor = lambda name: np.stack([sd[f'{prefix}{name}_l{layer}{s}'] for s in suffixes])
    params[f'w_ih_l{layer}'] = np.swapaxes(tensor('weight_ih'), 1, 2)
    params[f'w_hh_l{layer}'] = np.swapaxes(tensor('weight_hh'), 1, 2)
    params[f'bias_l{layer}'] = tensor('bias_ih') + tensor('bias_hh')
    layer += 1
  if not layer:
    raise KeyError(f'{sd.source} has no tensor {prefix}weight_ih_l0: not a torch.nn.LSTM state dict')
  return {'params': params}

