"""Tests for affjax.models: numbers against numpy float64 / PyTorch references, shapes and masks."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from affjax.models import layers
from affjax.models.attention import MultiHeadAttention, dot_product_attention
from affjax.models.attention import from_torch as attention_from_torch
from affjax.models.audio.frame_windows import slice_audio_windows
from affjax.models.backbones.audio1d import AUDIO_CNN_TABLES, AudioCNN1D
from affjax.models.backbones.mobilefacenet import MobileFaceNet
from affjax.models import cpu_kernels
from affjax.models.batch_norm import batch_norm
from affjax.models.layers import depthwise_conv2d, max_pool_tiled, pointwise_conv, sinusoidal_pe
from affjax.models.torch_convert import StateDictReader
from affjax.systems import build_model
from affjax.systems.audio_visual.cross_attn import CrossModalFusion
from affjax.systems.audio_visual.model import AudioVisualModel

import torch_checkpoints

# unsafe_rbg keys: parameter init and dropout compile several times faster than with threefry on CPU.
KEY = jax.random.key(0, impl='unsafe_rbg')
DROPOUT_KEY = jax.random.key(1, impl='unsafe_rbg')


def _init(model, *args, **kwargs):
  return jax.jit(functools.partial(model.init, **kwargs))(KEY, *args)


attention = jax.jit(dot_product_attention, static_argnames=('dropout_rate', 'deterministic', 'implementation'))


def _np(tree):
  return jax.tree.map(np.asarray, tree)


# ----------------------------------------------------------------------------- PE, attention
def test_sinusoidal_pe_matches_formula():
  length, d = 7, 6
  pe = sinusoidal_pe(length, d)
  assert pe.shape == (length, d) and pe.dtype == np.float32
  for p in range(length):
    for c in range(d):
      i = c // 2
      angle = p * 10000.0 ** (-2 * i / d)
      np.testing.assert_allclose(pe[p, c], math.sin(angle) if c % 2 == 0 else math.cos(angle), atol=1e-6)


def _np_attention(q, k, v, key_mask):
  """float64 reference: softmax(q k^T / sqrt(H)) v over keys where key_mask is True."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  logits = np.where(key_mask[:, None, None, :], logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  return np.einsum('bnts,bsnh->btnh', w, v), w


def test_attention_matches_numpy_with_key_mask():
  rng = np.random.default_rng(0)
  b, t, s, n, h = 3, 4, 5, 2, 8
  q, k, v = (rng.standard_normal(shape).astype(np.float32) for shape in [(b, t, n, h), (b, s, n, h), (b, s, n, h)])
  key_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)  # row 2: all keys masked
  out = np.asarray(attention(q, k, v, key_mask=key_mask))
  ref, _ = _np_attention(q[:2], k[:2], v[:2], key_mask[:2])
  np.testing.assert_allclose(out[:2], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out[2], 0.0)  # fully masked rows: zeros, not NaN
  grad = jax.grad(lambda q: attention(q, k, v, key_mask=key_mask).sum())(q)
  assert np.isfinite(np.asarray(grad)).all()
  np.testing.assert_allclose(np.asarray(attention(q, k, v)), _np_attention(q, k, v, np.ones((b, s), bool))[0],
                             rtol=1e-5, atol=1e-6)


def test_attention_dropout_drops_weights():
  """With v = identity over keys the output is the weight matrix: each entry is 0 or w / (1 - p)."""
  rng = np.random.default_rng(1)
  b, t, s, p = 2, 6, 8, 0.5
  q, k = rng.standard_normal((b, t, 1, s)).astype(np.float32), rng.standard_normal((b, s, 1, s)).astype(np.float32)
  v = np.broadcast_to(np.eye(s, dtype=np.float32)[None, :, None, :], (b, s, 1, s))
  key_mask = np.ones((b, s), bool)
  key_mask[1, 5:] = False
  out = np.asarray(attention(q, k, v, key_mask=key_mask, dropout_rate=p, dropout_rng=DROPOUT_KEY,
                             deterministic=False))[:, :, 0, :]
  _, w = _np_attention(q, k, v, key_mask)
  w = w[:, 0]
  kept = out != 0
  assert 0.3 < kept[key_mask[:, None, :].repeat(t, 1)].mean() < 0.7
  np.testing.assert_allclose(out[kept], w[kept] / (1 - p), rtol=1e-5)
  assert not kept[1, :, 5:].any()
  np.testing.assert_array_equal(  # deterministic=True ignores the rate
      np.asarray(attention(q, k, v, key_mask=key_mask, dropout_rate=p)), np.asarray(attention(q, k, v, key_mask=key_mask)))


def test_multihead_attention_matches_torch():
  torch = pytest.importorskip('torch')
  e, heads, b, t, s = 16, 4, 2, 5, 7
  rng = np.random.default_rng(2)
  xq, xkv = rng.standard_normal((b, t, e)).astype(np.float32), rng.standard_normal((b, s, e)).astype(np.float32)
  key_mask = np.ones((b, s), bool)
  key_mask[1, 4:] = False
  ref = torch.nn.MultiheadAttention(e, heads, batch_first=True)
  with torch.no_grad():
    ref.in_proj_bias.uniform_(-0.5, 0.5)
    ref.out_proj.bias.uniform_(-0.5, 0.5)
    expected, _ = ref(torch.tensor(xq), torch.tensor(xkv), torch.tensor(xkv), key_padding_mask=torch.tensor(~key_mask))
  mha = MultiHeadAttention(heads)
  init = _init(mha, xq, xkv)['params']
  params = attention_from_torch(StateDictReader({k: v.numpy() for k, v in ref.state_dict().items()}), heads)
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, init)
  assert params['query']['kernel'].shape == (e, heads, e // heads) and params['out']['kernel'].shape == (heads, e // heads, e)
  out = jax.jit(mha.apply)({'params': params}, xq, xkv, key_mask=key_mask)
  np.testing.assert_allclose(np.asarray(out), expected.numpy(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- convolution
@pytest.mark.parametrize('kernel,strides', [((7, 7), (2, 2)), ((1, 1), (2, 2)), ((1, 3, 3), (1, 2, 2)),
                                            ((3, 1, 1), (2, 1, 1)), ((3, 3), (2, 2)), ((3,), (1,)), ((6,), (2,))])
@pytest.mark.parametrize('cin', [1, 3])
def test_conv_taps_and_matmul_kernel_gradient_match_xla(kernel, strides, cin):
  """`conv_taps` (RJCA's CPU default) and `layers.conv_general_dilated` (on CPU XLA's convolution with the kernel
  gradient as one matmul over the taps) against lax.conv_general_dilated: outputs and both gradients, with odd
  and even sizes and strides, one input channel (Zhao19's first conv) or several."""
  rng = np.random.default_rng(3)
  spatial = (5, 4, 7)[3 - len(kernel):]
  x = jnp.asarray(rng.standard_normal((2, *spatial, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((*kernel, cin, 4)), jnp.float32)
  padding = [(k // 2, k // 2) for k in kernel]
  dims = 'DHW'[3 - len(kernel):]
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, (f'N{dims}C', f'{dims}IO', f'N{dims}C'))
  reference = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers)
  cotangent = jnp.asarray(rng.standard_normal(reference(x, w).shape), jnp.float32)
  expected = (reference(x, w), *jax.grad(lambda x, w: (reference(x, w) * cotangent).sum(), argnums=(0, 1))(x, w))
  for conv in (lambda x, w: layers.conv_taps(x, w, strides, padding),
               lambda x, w: layers.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers)):
    got = (conv(x, w), *jax.jit(jax.grad(lambda x, w, f=conv: (f(x, w) * cotangent).sum(), argnums=(0, 1)))(x, w))
    for a, b in zip(got, expected):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_nn_conv_takes_the_matmul_kernel_gradient_on_cpu():
  """What `nn.Conv` passes to its `conv_general_dilated` selects the custom VJP on CPU (not the fallback)."""
  conv = nn.Conv(4, (3,), padding=((1, 1),), conv_general_dilated=layers.conv_general_dilated)
  x = jnp.ones((2, 9, 1))
  variables = conv.init(KEY, x)
  jaxpr = str(jax.make_jaxpr(conv.apply)(variables, x))
  assert ('custom_vjp_call' in jaxpr) == (jax.default_backend() == 'cpu')
  np.testing.assert_array_equal(conv.apply(variables, x), nn.Conv(4, (3,), padding=((1, 1),)).apply(variables, x))


# ----------------------------------------------------------------------------- depthwise conv
@pytest.mark.parametrize('shape,stride,padding', [((2, 9, 9, 8), 1, 1), ((2, 9, 9, 8), 2, 1),
                                                   ((2, 10, 7, 3), 2, ((1, 0), (0, 1))), ((1, 6, 8, 4), 1, 0),
                                                   ((2, 11, 12, 5), 2, ((2, 1), (1, 2)))])
def test_depthwise_shifted_matches_grouped(shape, stride, padding):
  """The shifted form and its custom VJP against XLA's grouped convolution (autodiff): output, both gradients."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 1, shape[-1])), jnp.float32)
  ct = None
  results = {}
  for impl in ['grouped', 'shifted']:
    f = jax.jit(functools.partial(depthwise_conv2d, stride=stride, padding=padding, impl=impl))
    out, vjp = jax.vjp(f, x, kernel)
    ct = jnp.asarray(rng.standard_normal(out.shape), jnp.float32) if ct is None else ct
    results[impl] = (out, *vjp(ct))
  (top, bottom), (left, right) = ((padding, padding),) * 2 if isinstance(padding, int) else padding
  expected = ((shape[1] + top + bottom - 3) // stride + 1, (shape[2] + left + right - 3) // stride + 1)
  assert results['grouped'][0].shape == (shape[0], *expected, shape[-1])
  for a, b in zip(results['grouped'], results['shifted']):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def _depthwise_numpy(x, kernel, g, stride, padding):
  """Float64 reference: output, input gradient (the cotangent scattered back tap by tap) and kernel gradient."""
  (top, bottom), (left, right) = padding
  xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  kh, kw = kernel.shape[:2]
  ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
  y, dxp, dk = np.zeros(x.shape[:1] + (ho, wo) + x.shape[3:]), np.zeros_like(xp), np.zeros(kernel.shape)
  for i in range(kh):
    for j in range(kw):
      window = (slice(None), slice(i, i + stride * (ho - 1) + 1, stride), slice(j, j + stride * (wo - 1) + 1, stride))
      y += xp[window] * kernel[i, j, 0]
      if g is not None:
        dxp[window] += g * kernel[i, j, 0]
        dk[i, j, 0] = (xp[window] * g).sum(axis=(0, 1, 2))
  return y, dxp[:, top:top + x.shape[1], left:left + x.shape[2]], dk


@pytest.mark.parametrize('shape,stride,padding', [((2, 9, 9, 8), 1, ((1, 1), (1, 1))), ((2, 9, 9, 8), 2, ((1, 1), (1, 1))),
                                                   ((2, 10, 7, 3), 2, ((1, 0), (0, 1))), ((1, 6, 8, 4), 1, ((0, 0), (0, 0))),
                                                   ((3, 11, 12, 37), 2, ((2, 1), (1, 2))), ((40, 5, 4, 16), 1, ((1, 1), (1, 1)))])
def test_depthwise_native_matches_numpy_float64(shape, stride, padding):
  """affjax's native XLA:CPU kernels (output, input and kernel gradients) against a float64 numpy reference,
  including more rows than the kernels' work chunks (the last case) and channel counts that are no multiple of
  a vector."""
  assert cpu_kernels.built(), 'the native CPU kernels were not built (a C++ compiler at `pip install`)'
  rng = np.random.default_rng(6)
  x, kernel = rng.standard_normal(shape), rng.standard_normal((3, 3, 1, shape[-1]))
  y, _, _ = _depthwise_numpy(x, kernel, None, stride, padding)
  g = rng.standard_normal(y.shape)
  expected = _depthwise_numpy(x, kernel, g, stride, padding)
  f = jax.jit(functools.partial(depthwise_conv2d, stride=stride, padding=padding, impl='native'))
  out, vjp = jax.vjp(f, jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
  for got, want in zip((out, *vjp(jnp.asarray(g, jnp.float32))), expected):
    assert got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


def test_depthwise_native_refuses_other_dtypes():
  x, kernel = jnp.ones((1, 4, 4, 2), jnp.bfloat16), jnp.ones((3, 3, 1, 2), jnp.float32)
  with pytest.raises(ValueError, match="depthwise_impl='native' computes in float32"):
    depthwise_conv2d(x, kernel, 1, 1, impl='native')


def test_depthwise_auto_is_native_on_one_cpu_device_for_float32_and_vmaps(monkeypatch):
  """'auto' picks the native kernels for float32 on one CPU device, the shifted form for other dtypes and over
  several devices (the tests' 4, a batch sharded over them); the native form maps over an extra batch axis
  (vmap) like the shifted one."""
  x = jnp.asarray(np.random.default_rng(7).standard_normal((3, 2, 6, 6, 4)), jnp.float32)
  kernel = jnp.asarray(np.random.default_rng(8).standard_normal((3, 3, 1, 4)), jnp.float32)
  conv = lambda impl: jax.vmap(lambda v: depthwise_conv2d(v, kernel, 1, 1, impl=impl))
  assert jax.device_count() > 1 and 'ffi_call' not in str(jax.make_jaxpr(conv('auto'))(x))
  monkeypatch.setattr(jax, 'device_count', lambda: 1)
  assert 'ffi_call' in str(jax.make_jaxpr(conv('auto'))(x))
  assert 'ffi_call' not in str(jax.make_jaxpr(conv('auto'))(x.astype(jnp.bfloat16)))
  np.testing.assert_allclose(np.asarray(conv('native')(x)), np.asarray(conv('shifted')(x)), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- BatchNorm statistics
@pytest.mark.parametrize('shape', [(3, 50, 7), (40, 3, 16), (2, 1, 130)])
def test_masked_moments_match_numpy_float64(shape):
  """The native masked sums (and their gradient) against float64 numpy, with an image left out."""
  assert cpu_kernels.built(), 'the native CPU kernels were not built (a C++ compiler at `pip install`)'
  rng = np.random.default_rng(9)
  x = rng.standard_normal(shape) + 3.0
  mask = (np.arange(shape[0]) != 1).astype(np.float64)
  g = rng.standard_normal((2, shape[-1]))
  got, vjp = jax.vjp(cpu_kernels.masked_moments, jnp.asarray(x, jnp.float32), jnp.asarray(mask, jnp.float32))
  kept = x * mask[:, None, None]
  np.testing.assert_allclose(np.asarray(got), np.stack([kept.sum((0, 1)), (kept * x).sum((0, 1))]), rtol=2e-6)
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g, jnp.float32))[0]),
                             mask[:, None, None] * (g[0] + 2 * x * g[1]), rtol=1e-5, atol=1e-5)


def test_normalize_gradients_match_numpy_float64():
  """`cpu_kernels.normalize` ((x - mean) * mul + shift) and its native backward against float64 numpy, with a
  mean far from zero (the sums are centred in the kernel, not after it)."""
  rng = np.random.default_rng(11)
  x = rng.standard_normal((3, 20, 5)) + 50.0
  mean, mul, shift = x.mean((0, 1)), rng.uniform(0.5, 2, 5), rng.standard_normal(5)
  g = rng.standard_normal(x.shape)
  args = [jnp.asarray(v, jnp.float32) for v in (x, mean, mul, shift)]
  y, vjp = jax.vjp(cpu_kernels.normalize, *args)
  np.testing.assert_allclose(np.asarray(y), (x - mean) * mul + shift, rtol=1e-5, atol=1e-5)
  expected = (g * mul, -mul * g.sum((0, 1)), (g * (x - mean)).sum((0, 1)), g.sum((0, 1)))
  for got, want in zip(vjp(jnp.asarray(g, jnp.float32)), expected):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)


def test_prelu_gradients_match_numpy_float64():
  """`cpu_kernels.prelu` and its native backward against float64 numpy, negative slopes included."""
  rng = np.random.default_rng(12)
  x, slope = rng.standard_normal((3, 7, 9, 70)), rng.uniform(-0.5, 0.5, 70)
  g = rng.standard_normal(x.shape)
  y, vjp = jax.vjp(cpu_kernels.prelu, jnp.asarray(x, jnp.float32), jnp.asarray(slope, jnp.float32))
  dx, dslope = vjp(jnp.asarray(g, jnp.float32))
  np.testing.assert_allclose(np.asarray(y), np.where(x >= 0, x, slope * x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(dx), np.where(x >= 0, g, slope * g), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(dslope), np.where(x < 0, x * g, 0).sum((0, 1, 2)), rtol=1e-5, atol=1e-4)


class _ConvBlockBN(nn.Module):
  """A 1x1 conv then `batch_norm` (train mode), to compare its native and flax forms in a network."""

  @nn.compact
  def __call__(self, x, mask):
    return batch_norm(nn.Dense(6)(x), mask, train=True, momentum=0.9, epsilon=1e-5, dtype=jnp.float32, name='bn')


@pytest.mark.parametrize('mask_shape', [(4, 1, 1, 1), None])
def test_batch_norm_native_statistics_match_flax(monkeypatch, mask_shape):
  """On one CPU device `batch_norm` takes the native statistics; its output, updated running statistics and
  gradients (input and params) equal flax's `nn.BatchNorm` (the tests' 4 devices), with the same variables."""
  rng = np.random.default_rng(10)
  x = jnp.asarray(rng.standard_normal((4, 5, 7, 3)) * 2 + 1, jnp.float32)
  mask = None if mask_shape is None else jnp.asarray(np.arange(4) != 2).reshape(mask_shape)
  model = _ConvBlockBN()
  variables = model.init(KEY, x, mask)
  g = jnp.asarray(rng.standard_normal((4, 5, 7, 6)), jnp.float32)

  def run():
    def f(params, x):
      return model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, mask,
                         mutable=['batch_stats'])
    (y, stats), vjp = jax.vjp(f, variables['params'], x)
    grads = vjp((g, jax.tree.map(jnp.zeros_like, stats)))
    jaxpr = str(jax.make_jaxpr(f)(variables['params'], x))
    return (y, stats, grads), 'ffi_call' in jaxpr

  flax_form, flax_native = run()
  monkeypatch.setattr(jax, 'device_count', lambda: 1)
  native_form, native = run()
  assert native and not flax_native
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5),
               native_form, flax_form)


def test_batch_norm_keeps_flax_for_masks_that_are_not_per_image(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 1)
  x = jnp.ones((2, 4, 3), jnp.float32)
  mask = jnp.asarray([[True, False, True, True], [True, True, False, True]])[..., None]
  f = lambda x: _ConvBlockBN().init_with_output(KEY, x, mask)[0]
  assert 'ffi_call' not in str(jax.make_jaxpr(f)(x))


def test_pointwise_conv_gradients_match_autodiff():
  """`pointwise_conv` (on CPU its barrier-materialised VJP) against the plain einsum's autodiff, and a 1x1 lax.conv."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, 5, 6, 7)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((7, 3)), jnp.float32)
  ct = jnp.asarray(rng.standard_normal((2, 5, 6, 3)), jnp.float32)
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k[None, None], (1, 1), 'VALID',
                                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  out, vjp = jax.vjp(jax.jit(pointwise_conv), x, kernel)
  expected, vjp_expected = jax.vjp(conv, x, kernel)
  for a, b in zip((expected, *vjp_expected(ct)), (out, *vjp(ct))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape,window,padding', [((2, 43, 5), (4,), 0), ((2, 41, 3), (10,), 4),
                                                   ((2, 9, 11, 3), (2, 2), 0), ((2, 8, 7, 2), (2, 3), 1)])
def test_max_pool_tiled_matches_nn_max_pool(shape, window, padding):
  """Output and gradient against `nn.max_pool` (XLA's reduce-window and select-and-scatter), with ties (rounded
  inputs: the first maximum of a tile takes the gradient) and with the input made inside the jitted function
  (an ELU of a matmul, which XLA may fuse and recompute)."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((shape[-1], shape[-1])), jnp.float32)
  pools = {'nn': lambda h: nn.max_pool(h, window, strides=window, padding=[(padding, padding)] * len(window)),
           'tiled': lambda h: max_pool_tiled(h, window, padding)}
  for inputs in (jnp.round(x), x):
    results = {}
    for name, pool in pools.items():
      f = jax.jit(lambda x, w, pool=pool: pool(jax.nn.elu(x @ w)))
      out, vjp = jax.vjp(f, inputs, w)
      results[name] = (out, *vjp(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape) % 7 - 3))
    for a, b in zip(results['nn'], results['tiled']):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- MobileFaceNet
def test_mobilefacenet_param_count():
  shapes = jax.eval_shape(functools.partial(MobileFaceNet().init, train=False), KEY,
                          jax.ShapeDtypeStruct((1, 112, 112, 3), jnp.float32))
  n = sum(math.prod(p.shape) for p in jax.tree.leaves(shapes['params']))
  assert abs(n - 0.94e6) / 0.94e6 < 0.01, n  # spec: 0.94 M
  with pytest.raises(ValueError, match='112, 112, 3'):  # the reference turns 160 px into 8192-d features
    jax.eval_shape(functools.partial(MobileFaceNet().init, train=False), KEY,
                   jax.ShapeDtypeStruct((1, 160, 160, 3), jnp.float32))


@pytest.fixture(scope='module')
def mobilefacenet(av_model):
  """MobileFaceNet with the variables of the AV model's visual backbone (saves an init compile)."""
  variables = av_model[2]
  model = MobileFaceNet()
  images = np.random.default_rng(4).uniform(size=(3, 112, 112, 3)).astype(np.float32)
  return model, {c: variables[c]['visual'] for c in variables}, images, jax.jit(functools.partial(model.apply, train=False))


def test_mobilefacenet_matches_torch(mobilefacenet, tmp_path):
  """A face-alignment checkpoint ({'state_dict': ...}, the landmark head included) through the CLI's path."""
  torch = pytest.importorskip('torch')
  _, variables, images, apply_eval = mobilefacenet
  net = torch_checkpoints.upstream_mobilefacenet(torch)
  conversion = torch_checkpoints.save_and_convert(
      'mobilefacenet', {'epoch': 3, 'state_dict': net.state_dict()}, tmp_path / 'mobilefacenet_model_best.pth.tar')
  converted = conversion.variables
  assert conversion.prefix == '' and not conversion.outside_prefix
  assert conversion.heads_left_out == ['output_layer.bn.bias', 'output_layer.bn.num_batches_tracked',
                                       'output_layer.bn.running_mean', 'output_layer.bn.running_var',
                                       'output_layer.bn.weight', 'output_layer.linear.weight']
  assert jax.tree.structure(converted) == jax.tree.structure(_np(variables))
  assert jax.tree.map(np.shape, converted) == jax.tree.map(np.shape, _np(variables))
  with torch.no_grad():
    expected = net.features(torch.tensor(images.transpose(0, 3, 1, 2))).numpy()
  out = np.asarray(apply_eval(converted, images))
  assert out.shape == (3, 512)
  assert np.abs(out - expected).max() / np.abs(expected).max() < 1e-5
  native = MobileFaceNet(depthwise_impl='native').apply(converted, images, train=False)
  assert np.abs(np.asarray(native) - expected).max() / np.abs(expected).max() < 1e-5


def test_mobilefacenet_eval_is_per_image_and_deterministic(mobilefacenet):
  _, variables, images, apply_eval = mobilefacenet
  e1, e2 = np.asarray(apply_eval(variables, images)), np.asarray(apply_eval(variables, images[::-1]))
  np.testing.assert_array_equal(e1, np.asarray(apply_eval(variables, images)))
  np.testing.assert_allclose(e2[::-1], e1, rtol=1e-5, atol=1e-5 * np.abs(e1).max())


def test_mobilefacenet_train_gradient_native_matches_xla_forms(mobilefacenet, monkeypatch):
  """The train-mode loss, gradients and BatchNorm statistics of MobileFaceNet with the native CPU kernels (one
  device) against the same network in XLA's forms (the tests' 4 devices), a masked-out image included. In float32
  the reduction order's rounding grows through the BatchNorm chain to ~5e-3 of a leaf's norm in the worst leaf,
  hence the tolerance: a wrong kernel (stride, padding, a transposed tap) shows as errors of the leaves' own
  size."""
  model, variables, _, _ = mobilefacenet
  images = np.random.default_rng(13).uniform(size=(4, 112, 112, 3)).astype(np.float32)
  mask = np.arange(4) < 3

  def loss_and_grads():
    def loss(params):
      y, stats = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, images, train=True,
                             mask=mask, mutable=['batch_stats'])
      return (y[:3] ** 2).mean(), stats
    (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])
    return value, stats, grads, 'ffi_call' in str(jax.make_jaxpr(loss)(variables['params']))

  value, stats, grads, native = loss_and_grads()
  monkeypatch.setattr(jax, 'device_count', lambda: 1)
  value_n, stats_n, grads_n, native_n = loss_and_grads()
  assert native_n and not native
  assert float(value_n) == pytest.approx(float(value), rel=1e-4)
  # Leaves whose gradient is zero up to rounding (norm ~1e-9: the biases of BatchNorms whose output the next
  # BatchNorm centres) are compared in absolute terms; the others have norms of 1e-4 to 1e-1.
  within = lambda a, b: bool(np.linalg.norm(np.asarray(a) - b) <= 1e-2 * np.linalg.norm(b) + 1e-6)
  assert all(jax.tree.leaves(jax.tree.map(within, (grads_n, stats_n), (grads, stats))))


# ----------------------------------------------------------------------------- audio CNN
@pytest.mark.parametrize('name, lengths', [('zhao19', [2640, 660, 165, 41]), ('emo18', [1055, 131, 16]),
                                           ('emo16', [5280, 528])])
def test_audio_cnn_shapes(name, lengths):
  table = AUDIO_CNN_TABLES[name]
  model = AudioCNN1D(table)
  x = jax.ShapeDtypeStruct((3, 10560), jnp.float32)
  (out, variables) = jax.eval_shape(
      lambda x: model.init_with_output(KEY, x, train=False, mutable=['params', 'batch_stats', 'intermediates']), x)
  assert out.shape == (3, table[-1].features)
  inter = variables['intermediates']
  assert [inter[f'block{i}'][0].shape for i in range(len(table))] == [
      (3, n, blk.features) for n, blk in zip(lengths, table)]


@pytest.mark.parametrize('name, saved_as', [('zhao19', 'extractor'), ('emo16', 'end2you'), ('emo18', 'extractor')])
def test_audio_cnn_matches_torch(name, saved_as, tmp_path):
  """Checkpoints as saved upstream, converted through the CLI's path: 'extractor' is abaw3_rnn_attn's
  `AudioConvEncoder` (the Base under `model.`) saved as a bare state dict, like its `zhao19_extractor.pth.tar`;
  'end2you' is End2You's training checkpoint {'state_dict': AudioRNNModel, 'optim_dict': ...}, the Base
  under `audio_model.model.` next to the LSTM and the linear head."""
  torch = pytest.importorskip('torch')
  tnn = torch.nn
  table = AUDIO_CNN_TABLES[name]
  base = torch_checkpoints.end2you_base(torch, table)
  x = np.random.default_rng(5).uniform(-1, 1, (2, 10560)).astype(np.float32)
  with torch.no_grad():
    expected = base(torch.tensor(x)[:, None, :]).mean(-1).numpy()
  if saved_as == 'extractor':
    encoder = tnn.Module()
    encoder.model = base
    saved, prefix = encoder.state_dict(), 'model.'
  else:
    audio_model, rnn_model = tnn.Module(), tnn.Module()
    audio_model.model = base
    rnn_model.audio_model, rnn_model.rnn = audio_model, tnn.LSTM(table[-1].features, 8, batch_first=True)
    rnn_model.linear = tnn.Linear(8, 2)
    saved = {'state_dict': rnn_model.state_dict(), 'optim_dict': {'state': {}}, 'epoch': 4}
    prefix = 'audio_model.model.'
  conversion = torch_checkpoints.save_and_convert(name, saved, tmp_path / f'{name}.pth.tar')
  assert conversion.prefix == prefix
  assert conversion.outside_prefix == ([] if saved_as == 'extractor' else sorted(
      [f'rnn.{k}' for k in rnn_model.rnn.state_dict()] + ['linear.weight', 'linear.bias']))
  out = jax.jit(functools.partial(AudioCNN1D(table).apply, train=False))(conversion.variables, x)
  assert np.abs(np.asarray(out) - expected).max() / np.abs(expected).max() < 1e-5


def test_audio_cnn_kaiming_uniform_init():
  params = _np(jax.jit(lambda: AudioCNN1D(AUDIO_CNN_TABLES['emo18']).init(KEY, jnp.zeros((1, 10560)), train=False))())
  k = params['params']['conv1']['kernel']  # [6, 16, 32]: fan_in 96
  bound = math.sqrt(6 / 96)
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
  np.testing.assert_array_equal(params['params']['conv1']['bias'], 0.0)


# ----------------------------------------------------------------------------- fusion
FUSION = dict(d_embedding=16, d_ff=8, num_heads=2, n_ca=2, n_cv=1, num_layers=1)


def _fusion_inputs(b=2, t=5):
  rng = np.random.default_rng(6)
  audio, visual = rng.standard_normal((b, t, 6)).astype(np.float32), rng.standard_normal((b, t, 10)).astype(np.float32)
  mask = np.ones((b, t), bool)
  mask[1, 3:] = False
  return audio, visual, mask


@functools.lru_cache
def _fusion_apply(train: bool, gated: bool, compat: bool):
  """Jitted CrossModalFusion(**FUSION, ...).apply, shared between tests (one compile each)."""
  model = CrossModalFusion(**FUSION, gated=gated, compat_reference_layers=compat)
  return jax.jit(lambda v, a, vis, m: model.apply(v, a, vis, m, train=train, rngs={'dropout': DROPOUT_KEY}))


@pytest.fixture(scope='module')
def fusion_params():
  audio, visual, mask = _fusion_inputs()
  return _init(CrossModalFusion(**FUSION), audio, visual, mask, train=False)['params']


def _torch_fusion(torch, params, audio, visual, mask, *, compat, gated):
  """float64 eval-mode reference of CrossModalFusion written from the spec."""
  F = torch.nn.functional
  p = jax.tree.map(lambda a: torch.tensor(np.asarray(a), dtype=torch.float64), params)
  m = torch.tensor(mask)
  ln = lambda x, q: F.layer_norm(x, x.shape[-1:], q['scale'], q['bias'], eps=1e-5)
  dense = lambda x, q: x @ q['kernel'] + q['bias']
  gelu = lambda x: F.gelu(x)  # exact erf

  def mha(xq, xkv, q):
    heads = lambda x, w: torch.einsum('bte,enh->btnh', x, w['kernel']) + w['bias']
    qq, kk, vv = heads(xq, q['query']), heads(xkv, q['key']), heads(xkv, q['value'])
    logits = torch.einsum('btnh,bsnh->bnts', qq, kk) / math.sqrt(qq.shape[-1])
    w = torch.softmax(logits.masked_fill(~m[:, None, None, :], -math.inf), -1)
    return torch.einsum('bnts,bsnh->btnh', w, vv).flatten(2) @ q['out']['kernel'].flatten(0, 1) + q['out']['bias']

  def front(x, q):
    x = torch.tensor(x, dtype=torch.float64) * m[..., None]
    y = F.conv1d(x.transpose(1, 2), q['conv']['kernel'].permute(2, 1, 0), q['conv']['bias'], padding=1).transpose(1, 2)
    return y + torch.tensor(sinusoidal_pe(x.shape[1], y.shape[-1]), dtype=torch.float64)

  def cross(s, x, q):
    a = mha(ln(x, q['norm_tgt']), ln(s, q['norm_src']), q['attn'])
    base = a if compat else x
    y = q['alpha'] * a + (1 - q['alpha']) * base if gated else a + base
    return y + gelu(dense(gelu(dense(ln(y, q['norm_ffn']), q['ffn_in'])), q['ffn_out']))

  def self_layer(x, q):
    x = ln(x + mha(x, x, q['attn']), q['norm_attn'])
    return ln(x + dense(gelu(dense(x, q['ffn_in'])), q['ffn_out']), q['norm_ffn'])

  def stack(src, tgt, n, prefix):
    x = tgt
    for i in range(n):
      x = cross(src, tgt if compat else x, p[f'{prefix}_{i}'])
    return x

  a0, v0 = front(audio, p['audio_in']), front(visual, p['visual_in'])
  x = torch.cat([stack(a0, v0, FUSION['n_ca'], 'a2v'), stack(v0, a0, FUSION['n_cv'], 'v2a')], -1)
  for i in range(FUSION['num_layers']):
    x = self_layer(x, p[f'self_{i}'])
  return gelu(x).numpy()


@pytest.mark.parametrize('compat, gated', [(False, False), (True, False), (False, True)])
def test_cross_modal_fusion_matches_torch(fusion_params, compat, gated):
  torch = pytest.importorskip('torch')
  audio, visual, mask = _fusion_inputs()
  params = fusion_params
  if gated:  # the gated layer's only extra parameter: alpha (init 0.5), set to 0.3 here
    params = {k: {**v, 'alpha': np.float32(0.3)} if k.startswith(('a2v', 'v2a')) else v for k, v in params.items()}
    gated_init = functools.partial(CrossModalFusion(**FUSION, gated=True).init, train=False)
    assert jax.tree.structure(params) == jax.tree.structure(jax.eval_shape(gated_init, KEY, audio, visual, mask)['params'])
  apply = _fusion_apply(False, gated, compat)
  out = np.asarray(apply({'params': params}, audio, visual, mask))
  assert out.shape == (2, 5, FUSION['d_embedding'])
  expected = _torch_fusion(torch, params, audio, visual, mask, compat=compat, gated=gated)
  np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-4, atol=1e-5)


def test_compat_reference_layers_only_last_layer_counts(fusion_params):
  audio, visual, mask = _fusion_inputs()
  perturbed = {**fusion_params, 'a2v_0': jax.tree.map(lambda a: a + 0.5, fusion_params['a2v_0'])}
  outs = {}
  for compat in [False, True]:
    apply = _fusion_apply(False, False, compat)
    outs[compat] = [np.asarray(apply({'params': p}, audio, visual, mask)) for p in (fusion_params, perturbed)]
  assert not np.allclose(outs[False][0], outs[True][0])  # same params, different computation
  assert not np.allclose(outs[False][0], outs[False][1])  # stacked: layer 0 feeds layer 1
  np.testing.assert_array_equal(outs[True][0], outs[True][1])  # compat: layer 0's output is discarded


def test_fusion_ignores_padded_frames(fusion_params):
  audio, visual, mask = _fusion_inputs()
  noisy = lambda x: np.where(mask[..., None], x, 100.0).astype(np.float32)
  for train in [False, True]:
    apply = _fusion_apply(train, False, False)
    clean = np.asarray(apply({'params': fusion_params}, audio, visual, mask))
    dirty = np.asarray(apply({'params': fusion_params}, noisy(audio), noisy(visual), mask))
    np.testing.assert_allclose(dirty[mask], clean[mask], rtol=1e-5, atol=1e-6)
    assert np.isfinite(dirty).all()


# ----------------------------------------------------------------------------- whole model
def test_slice_audio_windows_matches_numpy():
  rng = np.random.default_rng(8)
  audio = rng.standard_normal((2, 50)).astype(np.float32)
  offsets = rng.integers(0, 50 - 12 + 1, (2, 4)).astype(np.int32)
  out = np.asarray(jax.jit(slice_audio_windows, static_argnums=2)(audio, offsets, 12))
  expected = np.stack([np.stack([audio[b, o:o + 12] for o in offsets[b]]) for b in range(2)])
  np.testing.assert_array_equal(out, expected)


def _model_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      name='cross_attn', modalities=('audio', 'visual'), visual_backbone='mobilefacenet', audio_backbone='zhao19',
      audio_window=10560, d_embedding=16, d_ff=8, num_heads=2, n_ca=1, n_cv=1, num_layers=1, dropout=0.3, act='gelu',
      gated=False, attention_impl='xla', depthwise_impl='auto', dtype='float32', num_bins=1,
      aux_classes=0, frozen=()))
  cfg.update(overrides)
  return cfg


_COMPAT = ml_collections.ConfigDict(dict(multv2_reference_layers=False, vggface2_rgb01_norm=False))


def _av_batch(b=2, t=3, window=10560, hop=533):
  rng = np.random.default_rng(9)
  mask = np.array([[True, True, False], [True, False, False]])
  return dict(faces=rng.integers(0, 256, (b, t, 112, 112, 3), dtype=np.uint8),
              audio=rng.uniform(-1, 1, (b, (t - 1) * hop + window)).astype(np.float32),
              audio_offsets=np.tile(np.arange(t, dtype=np.int32) * hop, (b, 1)), mask=mask)


@pytest.fixture(scope='module')
def av_model():
  """(model, batch, variables, step) for the default two-modality model built from a config.

  `step(batch)` -> (variables, train-mode output, updated BN statistics): init (fixed key) and one
  train-mode forward (dropout with a fixed key) in a single compiled function, so reruns are exact."""
  model = build_model(_model_config(), _COMPAT)

  def init_and_train_forward(batch):
    variables = model.init(KEY, batch, train=False)
    out, upd = model.apply(variables, batch, train=True, rngs={'dropout': DROPOUT_KEY}, mutable=['batch_stats'])
    return variables, out['va'], upd

  batch = _av_batch()
  step = jax.jit(init_and_train_forward)
  return model, batch, step(batch)[0], step


def test_av_model_train_step_and_padding(av_model):
  """Train mode: every BN's running variance moves; changing padded frames' faces and audio windows leaves
  the valid frames' outputs and the BN statistics unchanged; changing valid frames' inputs does not."""
  model, batch, variables, step = av_model
  assert isinstance(model, AudioVisualModel)
  assert set(variables['params']) == {'visual', 'audio', 'fusion', 'va'}
  _, out, upd = step(batch)
  out = np.asarray(out)
  assert out.shape == (2, 3, 2) and out.dtype == np.float32 and np.isfinite(out).all()
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), _np(upd['batch_stats']), _np(variables['batch_stats']))
  # (Means after zero-mean inputs and a bias-free 1x1 conv legitimately stay 0, so check the variances.)
  assert all(m for path, m in jax.tree_util.tree_leaves_with_path(moved) if path[-1].key == 'var')
  mask = batch['mask']
  dirty = dict(batch, faces=np.where(mask[..., None, None, None], batch['faces'], 255 - batch['faces']),
               audio_offsets=np.where(mask, batch['audio_offsets'], 7))
  _, out_dirty, upd_dirty = step(dirty)
  np.testing.assert_allclose(np.asarray(out_dirty)[mask], out[mask], rtol=1e-5, atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), _np(upd_dirty), _np(upd))
  for name, value in [('faces', 255 - batch['faces']), ('audio_offsets', batch['audio_offsets'] + 100)]:
    changed = {**batch, name: np.where(mask[:, :, None, None, None] if name == 'faces' else mask, value, batch[name])}
    assert not np.allclose(np.asarray(step(changed)[1])[mask], out[mask], rtol=1e-3, atol=1e-3), name


@pytest.mark.parametrize('modality, inputs, width', [('audio', ('audio', 'audio_offsets'), 128), ('visual', ('faces',), 512)])
def test_single_modality_models(modality, inputs, width):
  """Built from a config and traced (eval_shape) without the other modality's inputs; the code they run
  is the two-modality model's backbone path plus the fusion's single-modality path, both run elsewhere."""
  model = build_model(_model_config(modalities=(modality,)), _COMPAT)
  batch = {k: v for k, v in _av_batch().items() if k in inputs + ('mask',)}
  out, variables = jax.eval_shape(functools.partial(model.init_with_output, train=False), KEY, batch)
  assert set(variables['params']) == {modality, 'fusion', 'va'}
  assert variables['params']['fusion'][f'{modality}_in']['conv']['kernel'].shape == (3, width, 16)
  assert out['va'].shape == (2, 3, 2) and out['va'].dtype == jnp.float32


def test_fusion_single_modality_runs_and_masks():
  _, visual, mask = _fusion_inputs()
  model = CrossModalFusion(**FUSION)
  variables = _init(model, None, visual, mask, train=False)
  assert 'audio_in' not in variables['params'] and variables['params']['visual_in']['conv']['kernel'].shape == (3, 10, 16)
  apply = jax.jit(lambda v: model.apply(variables, None, v, mask, train=False))
  clean, dirty = np.asarray(apply(visual)), np.asarray(apply(np.where(mask[..., None], visual, 100.0)))
  assert clean.shape == (2, 5, 16) and np.isfinite(dirty).all()
  np.testing.assert_allclose(dirty[mask], clean[mask], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('field, value, allowed', [
    ('visual_backbone', 'x', "['mobilefacenet', 'inceptionresnetv1', 'vggface2_resnet50', 'vggface2_senet50']"),
    ('audio_backbone', 'vggish', "['emo16', 'emo18', 'zhao19']"),
    ('name', 'mult', "['cross_attn', 'lfan', 'lstm', 'rjca', 'self_attn', 'sparse_e2e'], nor the dotted path of a "
                     'module that defines SYSTEM (an affjax.systems.System)'),
    ('dtype', 'float16', "['float32', 'bfloat16']")])
def test_build_model_rejects_unknown_names(field, value, allowed):
  with pytest.raises(ValueError) as err:
    build_model(_model_config(**{field: value}), _COMPAT)
  assert str(err.value) == f'config.model.{field}={value!r} is not one of {allowed}'
