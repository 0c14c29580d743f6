"""From config to built records: the user's Aff-Wild2 tree, or the synthetic tree generated once."""
from __future__ import annotations

import hashlib
import json
import logging
import pathlib

import jax

from affjax.data import builder, synthetic


def tag(values) -> str:
  """A short hash of `values` (JSON), naming a cache directory."""
  return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def source_tree(config) -> pathlib.Path:
  """config.data.manual_dir, or the synthetic tree under cache_dir (generated on first use)."""
  data = config.data
  if data.manual_dir:
    return pathlib.Path(data.manual_dir).expanduser()
  kwargs = dict(data.synthetic.to_dict(), image_size=data.image_size)
  root = pathlib.Path(data.cache_dir).expanduser() / 'synthetic' / tag(dict(kwargs, version=synthetic.VERSION))
  logging.info('no --config.data.manual_dir given: using the synthetic Aff-Wild2 tree %s', root)
  if jax.process_index() == 0:
    synthetic.ensure(root, **kwargs)
  return root


def records_dir(config) -> str:
  """Builds the records of the configured source once and returns the dataset directory to read."""
  data = config.data
  tree = source_tree(config)
  base = (pathlib.Path(data.records_dir).expanduser() if data.records_dir else
          pathlib.Path(data.cache_dir).expanduser() / 'records' / f'{tree.name}-{tag(str(tree.absolute()))}')
  if jax.process_index() == 0:
    builder.build(tree, base, chunk_size=data.chunk_size, test_list=data.test_list)
  sync_processes('affjax records built')
  return str(builder.dataset_dir(base, data.chunk_size))


def sync_processes(what: str) -> None:
  """Waits until every process gets here (after process 0 built something they all read)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(what)


def input_dir(config) -> str:
  """The records a run reads: the feature cache `config.data.features_dir` when given (checked against the
  configured tree as it is now), else the frame records of the configured source (built on first use)."""
  features_dir = config.data.features_dir
  if not features_dir:
    return records_dir(config)
  if jax.process_index() == 0:
    builder.check_fresh(features_dir, source_tree(config), config.data.test_list,
                        'Rebuild the records it was computed from (tools/build_records.py --rebuild), then the cache '
                        '(tools/cache_features.py)')
  sync_processes('affjax feature cache checked')
  return features_dir
