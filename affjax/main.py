"""Entry point: python -m affjax.main --config=configs/cross_attn.py --workdir=DIR [--mode=train|eval]."""
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A config file of configs/, e.g. configs/cross_attn.py:smoke.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, metrics and predictions.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resumes from the latest checkpoint, then evaluates the best) or eval.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, except that an override of a config field that does not exist stops in one line naming
  it and the closest known fields."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, TypeError):
    from affjax import config_validation  # pylint: disable=g-import-not-at-top

    files = [a.split('=', 1)[1] if '=' in a else b for a, b in zip(argv[1:], argv[2:] + [''])
             if a.split('=', 1)[0] == '--config']
    if not files:
      raise
    config = flags.FLAGS['config'].parser.parse(files[-1])  # the config file's fields, before any override
    for arg in argv[1:]:
      if arg.startswith('--config.'):
        message = config_validation.unknown_field_message(config, arg[len('--config.'):].split('=', 1)[0])
        if message:
          sys.exit(f'{arg}: {message}')
    raise


def main(argv):
  del argv
  # nothing heavy at import: grain workers re-import this module
  from affjax import config_validation, workdir_lock  # pylint: disable=g-import-not-at-top
  from affjax.train import loop  # pylint: disable=g-import-not-at-top

  run = loop.train_and_evaluate if _MODE.value == 'train' else loop.evaluate_only
  try:
    loop.start_process(_CONFIG.value)  # validates the config: a bad value stops here, before anything is written
    run(_CONFIG.value, _WORKDIR.value)
  except (config_validation.ConfigError, workdir_lock.WorkdirBusyError, workdir_lock.WorkdirNotSharedError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
