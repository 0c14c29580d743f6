"""Tests run on CPU with 4 forced host devices, so that every step exercises the data-parallel path."""
import os
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Runs in one session recompile the same steps: a persistent cache turns every repeat into a load.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'affjax-test-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import pytest  # noqa: E402

TINY_TREE = dict(num_train=3, num_validation=2, num_test=1, min_frames=48, max_frames=64, image_size=112, seed=0)


@pytest.fixture(scope='session')
def tiny_tree(tmp_path_factory):
  from affjax.data import synthetic  # pylint: disable=g-import-not-at-top
  return synthetic.ensure(tmp_path_factory.mktemp('affwild2') / 'tree', **TINY_TREE)


@pytest.fixture(scope='session')
def tiny_records(tiny_tree, tmp_path_factory):
  """Records of the tiny tree with 16-frame chunks; returns the dataset directory."""
  from affjax.data import builder  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('records')
  builder.build(tiny_tree, out, chunk_size=16)
  return str(builder.dataset_dir(out, 16))
