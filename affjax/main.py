"""Entry point: python -m affjax.main --config=configs/cross_attn.py --workdir=DIR [--mode=train|eval]."""
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A config file of configs/, e.g. configs/cross_attn.py:smoke.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, metrics and predictions.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resumes from the latest checkpoint, then evaluates the best) or eval.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top  (nothing heavy at import: grain workers re-import this module)

  from affjax import config_validation, parallel  # pylint: disable=g-import-not-at-top
  from affjax import logging as affjax_logging  # pylint: disable=g-import-not-at-top
  from affjax.train import loop  # pylint: disable=g-import-not-at-top

  affjax_logging.quiet_library_info()
  parallel.maybe_initialize_distributed()
  jax.config.update('jax_threefry_partitionable', True)
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):  # reruns and resumes load compiled steps instead of recompiling
    jax.config.update('jax_compilation_cache_dir', os.path.join(os.path.expanduser(_CONFIG.value.data.cache_dir), 'jax'))
  logging.info('process %d of %d, devices: %s', jax.process_index(), jax.process_count(), jax.devices())
  config_validation.validate(_CONFIG.value)
  run = loop.train_and_evaluate if _MODE.value == 'train' else loop.evaluate_only
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
