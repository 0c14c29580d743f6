"""Scalar mean and standard deviation of LFAN's follower features over a run's training partition (spec lfan 3.3).

  PYTHONPATH=. python tools/feature_stats.py --config=configs/lfan.py [--config.data.fold=K]

One mean and one std (N - 1) over every dimension and every frame of the training videos (of the fold; padding
excluded); every partition is then normalised with them (the reference used each partition's own statistics, lfan
bug 3). A training run computes them itself when `model.feature_norm.<follower>` is `()` (the default) and saves
them in `<workdir>/feature_norm.json`; this prints the overrides that fix them instead.
"""
from __future__ import annotations

import tempfile

from absl import app
from ml_collections import config_flags

from affjax.data import prepare
from affjax.systems.lfan import followers

_CONFIG = config_flags.DEFINE_config_file('config', None, 'An LFAN config file, e.g. configs/lfan.py.')


def main(argv):
  del argv
  config = _CONFIG.value.copy_and_resolve_references()
  for name in config.model.followers:
    config.model.feature_norm[name] = ()  # computed, whatever the config says
  with tempfile.TemporaryDirectory() as workdir:
    config = followers.prepare(config, prepare.records_dir(config), workdir)
  for name in config.model.followers:
    print(f'--config.model.feature_norm.{name}="{tuple(config.model.feature_norm[name])}"')


if __name__ == '__main__':
  app.run(main)
