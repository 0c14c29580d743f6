"""Entry point: python -m affjax.main --config=configs/cross_attn.py --workdir=DIR [--mode=train|eval]."""
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A config file of configs/, e.g. configs/cross_attn.py:smoke.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, metrics and predictions.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resumes from the latest checkpoint, then evaluates the best) or eval.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  # nothing heavy at import: grain workers re-import this module
  from affjax.train import loop  # pylint: disable=g-import-not-at-top

  loop.start_process(_CONFIG.value)
  run = loop.train_and_evaluate if _MODE.value == 'train' else loop.evaluate_only
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
