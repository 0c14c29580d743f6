"""Sparse stages: nucleus selection vs numpy, trained scorers, masked-dense vs dense, gather vs masked-dense."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax.models import sparse_stages


def numpy_nucleus(alpha: np.ndarray, p: float, valid: np.ndarray) -> np.ndarray:
  """Direct reference: per row, sort the valid sites by descending α (stable), keep while the exclusive
  cumulative sum is < p, always the first."""
  keep = np.zeros(alpha.shape, bool)
  for r in range(alpha.shape[0]):
    sites = np.flatnonzero(valid[r])
    order = sites[np.argsort(-alpha[r, sites], kind='stable')]
    total = 0.0
    for j, site in enumerate(order):
      if total < p or j == 0:
        keep[r, site] = True
      total += alpha[r, site]
  return keep


def random_distribution(rng, shape, valid, ties=False):
  logits = rng.normal(size=shape) * 2
  if ties:
    logits = np.round(logits)  # many equal values per row
  alpha = np.where(valid, np.exp(logits), 0)
  return alpha / alpha.sum(-1, keepdims=True)


@pytest.mark.parametrize('p', [0.1, 0.5, 0.8, 0.9, 0.999, 1 - 1e-12, 1.0, 1.5])
@pytest.mark.parametrize('ties', [False, True])
def test_nucleus_matches_numpy_sort_and_cumsum(p, ties):
  rng = np.random.default_rng(0)
  valid = rng.random((64, 37)) < 0.7
  valid[:, 0] = True
  alpha = random_distribution(rng, valid.shape, valid, ties)
  with jax.enable_x64(True):
    got = np.asarray(jax.jit(sparse_stages.nucleus_mask, static_argnums=1)(jnp.asarray(alpha), p, jnp.asarray(valid)))
  expected = numpy_nucleus(alpha, p, valid)
  np.testing.assert_array_equal(got, expected)
  assert got.any(axis=1).all()  # the top site is always kept
  if p >= 1:
    np.testing.assert_array_equal(got, valid)


def test_nucleus_on_exact_ties_keeps_first_in_index_order():
  alpha = jnp.asarray([[0.25, 0.25, 0.25, 0.25]])
  np.testing.assert_array_equal(sparse_stages.nucleus_mask(alpha, 0.5), [[True, True, False, False]])
  np.testing.assert_array_equal(sparse_stages.nucleus_mask(alpha, 0.0), [[True, False, False, False]])


def test_top_k_slots_hold_the_nucleus_when_capacity_suffices():
  rng = np.random.default_rng(1)
  alpha = jnp.asarray(random_distribution(rng, (16, 50), np.ones((16, 50), bool)), jnp.float32)
  keep = sparse_stages.nucleus_mask(alpha, 0.8)
  for k in (50, int(keep.sum(-1).max())):
    index, active = sparse_stages.top_k_slots(alpha, keep, k)
    got = np.zeros(keep.shape, bool)
    np.put_along_axis(got, np.asarray(index), np.asarray(active), axis=1)
    np.testing.assert_array_equal(got, keep)
  index, active = sparse_stages.top_k_slots(alpha, keep, 3)  # truncated: the (up to) 3 highest kept sites
  alpha, keep, index, active = map(np.asarray, (alpha, keep, index, active))
  for r in range(len(alpha)):
    kept = np.flatnonzero(keep[r])
    expected = kept[np.argsort(-alpha[r, kept])][:3]
    assert sorted(index[r][active[r]]) == sorted(expected)


def test_attention_weights_renormalise_over_kept_sites():
  alpha = jnp.asarray([[0.5, 0.3, 0.2, 0.0]])
  keep = jnp.asarray([[True, True, False, False]])
  g = np.asarray(sparse_stages.attention_weights(alpha, keep, 'renorm'))
  np.testing.assert_allclose(g, [[0.5 / 0.8 * 2, 0.3 / 0.8 * 2, 0, 0]], rtol=1e-6)
  np.testing.assert_array_equal(sparse_stages.attention_weights(alpha, keep, 'straight_through'), [[1, 1, 0, 0]])
  with pytest.raises(ValueError, match='config.model.scma_grad'):
    sparse_stages.attention_weights(alpha, keep, 'bogus')


@pytest.mark.parametrize('mode,reaches', [('renorm', True), ('straight_through', True), ('none', False)])
def test_gradients_reach_every_scorer_parameter(mode, reaches):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 6, 6, 8)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  active = jnp.asarray(rng.random((3, 6, 6)) < 0.8).at[:, 0, 0].set(True)
  scorer = sparse_stages.AdditiveScorer(8)
  params = scorer.init(jax.random.key(0, impl='unsafe_rbg'), x, y, active)['params']
  target = jnp.asarray(rng.normal(size=(3, 36)), jnp.float32)

  def loss(params):
    alpha = scorer.apply({'params': params}, x, y, active)
    keep = sparse_stages.nucleus_mask(jax.lax.stop_gradient(alpha), 0.8, active.reshape(3, -1))
    return (sparse_stages.attention_weights(alpha, keep, mode) * target).sum()

  grads = jax.grad(loss)(params)
  assert set(grads) == {'w_c', 'w_y', 'w_a'}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    if reaches and 'w_a' in jax.tree_util.keystr(path) and 'bias' in jax.tree_util.keystr(path):
      np.testing.assert_allclose(g, 0, atol=1e-5)  # a constant shift of every score: softmax-invariant
    elif reaches:
      assert np.abs(np.asarray(g)).min() > 0, jax.tree_util.keystr(path)
    else:
      np.testing.assert_array_equal(g, 0)


def test_scorer_softmax_is_over_active_sites_only():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)
  active = jnp.asarray(rng.random((2, 4, 4)) < 0.5).at[:, 1, 1].set(True)
  scorer = sparse_stages.AdditiveScorer(4)
  variables = scorer.init(jax.random.key(0, impl='unsafe_rbg'), x, y, active)
  alpha = np.asarray(scorer.apply(variables, x, y, active))
  p = variables['params']
  query = (np.asarray(y) @ p['w_y']['kernel'])[:, None, None]
  s = np.tanh(np.asarray(x) @ p['w_c']['kernel'] + p['w_c']['bias'] + query)
  s = (s @ p['w_a']['kernel'])[..., 0].reshape(2, -1) + p['w_a']['bias']
  flat = np.asarray(active).reshape(2, -1)
  expected = np.where(flat, np.exp(s - s.max(-1, keepdims=True)), 0)
  np.testing.assert_allclose(alpha, expected / expected.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


class DenseVggBlock(nn.Module):
  """The plain dense block the masked-dense one must equal when nothing is pruned."""

  @nn.compact
  def __call__(self, x, train):
    for i in range(2):
      x = nn.Conv(8, (3, 3), padding='SAME', use_bias=False, name=f'conv{i}')(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-4, name=f'bn{i}')(x))
    return x


@pytest.mark.parametrize('train', [True, False])
def test_masked_dense_block_equals_dense_block_when_nothing_is_pruned(train):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(4, 6, 6, 5)), jnp.float32)
  active, valid = jnp.ones((4, 6, 6), bool), jnp.ones((4,), bool)
  block = sparse_stages.VggBlock(8)
  variables = block.init(jax.random.key(0, impl='unsafe_rbg'), x, active, valid, train=False)
  stats = jax.tree.map(lambda v: v + rng.uniform(0.1, 0.5, v.shape).astype(np.float32),
                       variables['batch_stats'])  # non-trivial running averages
  params = variables['params']
  params = dict(params, bn0=dict(scale=params['bn0']['scale'] * 1.5, bias=params['bn0']['bias'] + 0.1),
                bn1=params['bn1'])
  ref_vars = {'params': {f'conv{i}': {'kernel': params[f'conv{i}']} for i in range(2)},
              'batch_stats': {f'bn{i}': stats[f'bn{i}'] for i in range(2)}}
  for i in range(2):
    ref_vars['params'][f'bn{i}'] = params[f'bn{i}']
  got, got_upd = block.apply({'params': params, 'batch_stats': stats}, x, active, valid, train=train,
                             mutable=['batch_stats'])
  ref, ref_upd = DenseVggBlock().apply(ref_vars, x, train, mutable=['batch_stats'])
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got_upd['batch_stats'],
               ref_upd['batch_stats'])


def test_masked_batch_norm_statistics_ignore_inactive_sites():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
  mask = rng.random((3, 4, 4)) < 0.5
  garbage = np.where(mask[..., None], x, 1e3)
  bn = sparse_stages.MaskedBatchNorm(affine=False)
  variables = bn.init(jax.random.key(0), garbage, mask, train=False)
  y, upd = bn.apply(variables, jnp.asarray(garbage), jnp.asarray(mask), train=True, mutable=['batch_stats'])
  sel = x[mask].astype(np.float64)
  expected = (sel - sel.mean(0)) / np.sqrt(sel.var(0) + 1e-4)
  np.testing.assert_allclose(np.asarray(y)[mask], expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(upd['batch_stats']['mean'], 0.01 * sel.mean(0), rtol=1e-5, atol=1e-7)


def make_slots(alpha, keep, k):
  index, slot_active = sparse_stages.top_k_slots(alpha, keep, k)
  n = alpha.shape[0]
  active = jnp.zeros(alpha.shape, bool).at[jnp.arange(n)[:, None], index].set(slot_active)
  return (index, slot_active), active


@pytest.mark.parametrize('train', [True, False])
def test_gather_block_equals_masked_dense_when_capacity_holds_the_nucleus(train):
  rng = np.random.default_rng(6)
  n, h, w, c = 5, 6, 4, 3
  x = rng.normal(size=(n, h, w, c)).astype(np.float32)
  alpha = jnp.asarray(random_distribution(rng, (n, h * w), np.ones((n, h * w), bool)), jnp.float32)
  keep = sparse_stages.nucleus_mask(alpha, 0.7)
  k = int(keep.sum(-1).max())
  assert k < h * w  # something is pruned
  slots, active = make_slots(alpha, keep, k)
  np.testing.assert_array_equal(active, keep)
  active = active.reshape(n, h, w)
  x = jnp.where(active[..., None], x, 0)
  valid = jnp.asarray([True, True, True, True, False])
  dense, gather = sparse_stages.VggBlock(4, 'masked_dense'), sparse_stages.VggBlock(4, 'gather')
  variables = dense.init(jax.random.key(0, impl='unsafe_rbg'), x, active, valid, train=False)
  variables = dict(variables, batch_stats=jax.tree.map(lambda v: v + 0.3, variables['batch_stats']))
  run = lambda block, **kw: jax.jit(lambda v: block.apply(v, x, active, valid, train=train, mutable=['batch_stats'],
                                                          **kw))(variables)
  (a, upd_a), (b, upd_b) = run(dense), run(gather, slots=slots)
  assert np.abs(np.asarray(a)).max() > 0
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), upd_a, upd_b)
  assert np.all(np.asarray(b)[~np.asarray(active)] == 0)


def test_gather_block_grad_equals_masked_dense_grad():
  rng = np.random.default_rng(7)
  n, h, w, c = 3, 4, 4, 2
  alpha = jnp.asarray(random_distribution(rng, (n, h * w), np.ones((n, h * w), bool)), jnp.float32)
  keep = sparse_stages.nucleus_mask(alpha, 0.6)
  slots, active = make_slots(alpha, keep, int(keep.sum(-1).max()) + 2)
  active = active.reshape(n, h, w)
  x = jnp.where(active[..., None], rng.normal(size=(n, h, w, c)).astype(np.float32), 0)
  valid = jnp.ones((n,), bool)
  variables = sparse_stages.VggBlock(3).init(jax.random.key(1, impl='unsafe_rbg'), x, active, valid, train=False)

  def loss(params, x, impl, **kw):
    y, _ = sparse_stages.VggBlock(3, impl).apply({'params': params, 'batch_stats': variables['batch_stats']}, x, active,
                                          valid, train=True, mutable=['batch_stats'], **kw)
    return (y * jnp.arange(3.0)).sum()

  ga = jax.grad(loss, argnums=(0, 1))(variables['params'], x, 'masked_dense')
  gb = jax.grad(loss, argnums=(0, 1))(variables['params'], x, 'gather', slots=slots)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5), ga, gb)


def test_unknown_sparse_impl_names_the_field():
  x, active = jnp.zeros((1, 2, 2, 1)), jnp.ones((1, 2, 2), bool)
  with pytest.raises(ValueError, match='config.model.sparse_impl'):
    sparse_stages.VggBlock(1, 'bogus').init(jax.random.key(0), x, active, jnp.ones((1,), bool), train=False)


def test_capacity_and_pool_mask():
  capacity = sparse_stages.capacity
  assert capacity(0.4, 24, 24) == 231 and capacity(1.0, 3, 3) == 9 and capacity(0.0, 4, 4) == 1
  m = np.zeros((1, 4, 4), bool)
  m[0, 1, 2] = True
  np.testing.assert_array_equal(sparse_stages.pool_mask(jnp.asarray(m)), [[[False, True], [False, False]]])


@pytest.mark.parametrize('fraction', [0.05, 0.3, 0.6, 1.0])
def test_top_fraction_mask_equals_the_top_k_slots(fraction):
  rng = np.random.default_rng(8)
  alpha = jnp.asarray(random_distribution(rng, (16, 40), np.ones((16, 40), bool), ties=True), jnp.float32)
  keep = sparse_stages.nucleus_mask(alpha, 0.9)
  _, expected = make_slots(alpha, keep, sparse_stages.capacity(fraction, 40, 1))
  got = jax.jit(sparse_stages.top_fraction_mask)(alpha, keep, jnp.float32(fraction))
  np.testing.assert_array_equal(got, expected)
