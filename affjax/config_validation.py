"""Checks a config before anything is built or compiled; every error names the field and what to do."""
from __future__ import annotations

import difflib
import math
import pathlib

import jax
from absl import logging

from affjax import systems
from affjax.data import folds, views
from affjax.train import optim as optim_lib

_DTYPES = ('float32', 'bfloat16')
_MODALITIES = ('audio', 'visual')


class ConfigError(ValueError):
  pass


def _require(ok: bool, field: str, value, expected: str) -> None:
  if not ok:
    raise ConfigError(f'config.{field}={value!r} is invalid: {expected}')


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(config, *fields: str) -> None:
  for field in fields:
    value = _get(config, field)
    _require(_number(value) and value > 0, field, value, 'must be a finite number > 0')


def _in_range(config, field: str, low: float, high: float, *, high_open: bool = False) -> None:
  value = _get(config, field)
  ok = _number(value) and low <= value and (value < high if high_open else value <= high)
  _require(ok, field, value, f'must be a number in [{low}, {high}{")" if high_open else "]"}')


def _get(config, field: str):
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def field_paths(config, prefix: str = '') -> list[str]:
  """Every field of `config` as a dotted path ('train.batch_size', ...), sections included."""
  paths = []
  for key, value in config.items():
    paths.append(prefix + key)
    if hasattr(value, 'items'):
      paths += field_paths(value, f'{prefix}{key}.')
  return paths


def unknown_field_message(config, path: str) -> str | None:
  """None if `path` ('train.batch_size') names a field of `config`; else one line saying which part is unknown
  and the closest known fields (of the same section, or anywhere for an unknown section)."""
  value, parts = config, path.split('.')
  for depth, part in enumerate(parts):
    if not hasattr(value, 'items') or part not in value:
      parent = '.'.join(parts[:depth])
      if not hasattr(value, 'items'):
        return f'no such field: config.{parent} is a value, not a section'
      siblings = [f'{parent}.{k}' if parent else k for k in value.keys()]
      candidates = siblings if parent else field_paths(config)
      closest = difflib.get_close_matches(path, candidates, n=3, cutoff=0.6)
      hint = f'closest: {", ".join(closest)}' if closest else f'known: {", ".join(sorted(siblings))}'
      return f"no such field: {f'config.{parent}' if parent else 'the config'} has no {part!r} ({hint})"
    value = value[part]
  return None


def validate(config) -> None:
  data, train, model = config.data, config.train, config.model
  _positive(config, 'data.chunk_size', 'data.window', 'data.train_hop', 'data.eval_hop', 'data.image_size',
            'data.audio_window', 'data.min_fps', 'train.batch_size', 'train.num_steps', 'train.log_every',
            'train.eval_every', 'train.checkpoint_every', 'train.keep_checkpoints', 'eval.batch_size',
            'optim.learning_rate')
  _require(data.eval_hop <= data.window, 'data.eval_hop', data.eval_hop,
           f'must be <= config.data.window={data.window} so that every frame is predicted')
  _require(data.train_hop <= data.window, 'data.train_hop', data.train_hop,
           f'must be <= config.data.window={data.window} so that every frame is trained on')
  if data.manual_dir:
    _require(pathlib.Path(data.manual_dir).expanduser().is_dir(), 'data.manual_dir', data.manual_dir,
             'is not a directory: give the root of the Aff-Wild2 release (holding cropped_aligned/, '
             'annotations/ and the videos), or leave it empty to use the synthetic tree')
  _require(data.num_workers >= 0, 'data.num_workers', data.num_workers, 'must be >= 0')
  _require(data.fold in range(-1, folds.NUM_FOLDS), 'data.fold', data.fold,
           f'must be -1 (the official partitions) or a cross-validation fold 0..{folds.NUM_FOLDS - 1}')
  devices = jax.device_count()
  for field in ('train.batch_size', 'eval.batch_size'):
    value = _get(config, field)
    _require(value % devices == 0, field, value,
             f'must be a multiple of the {devices} devices the batch is split over')
  _require(train.dtype in _DTYPES, 'train.dtype', train.dtype, f'must be one of {_DTYPES}')
  _require(len(config.loss.ccc_weights) == 2 and min(config.loss.ccc_weights) >= 0, 'loss.ccc_weights',
           config.loss.ccc_weights, 'must be two non-negative weights (valence, arousal)')
  weights = config.eval.selection_weights
  _require(len(weights) == 2 and min(weights) >= 0 and sum(weights) > 0, 'eval.selection_weights', weights,
           'must be two non-negative weights (valence, arousal), not both 0')
  _require(config.loss.mse_weight >= 0, 'loss.mse_weight', config.loss.mse_weight, 'must be >= 0')
  _validate_optimizer(config)
  _require(train.on_nonfinite in ('stop', 'rollback'), 'train.on_nonfinite', train.on_nonfinite,
           "must be 'stop' or 'rollback'")
  _require(isinstance(train.max_rollbacks, int) and train.max_rollbacks >= 0, 'train.max_rollbacks',
           train.max_rollbacks, 'must be an integer >= 0')
  _require(train.recipe in ('steps', 'epochs'), 'train.recipe', train.recipe, "must be 'steps' or 'epochs'")
  modalities = tuple(model.modalities)
  _require(len(modalities) > 0 and set(modalities) <= set(_MODALITIES) and len(set(modalities)) == len(modalities),
           'model.modalities', modalities, f'must be a non-empty subset of {_MODALITIES}')
  crop = data.crop_size
  _require(0 <= crop <= data.image_size, 'data.crop_size', crop,
           f'must be in [0, config.data.image_size={data.image_size}] (0 = no crop)')
  _validate_view(config)
  _validate_training_scheme(config)
  for split in config.eval.splits:
    _require(split in ('train', 'validation', 'test'), 'eval.splits', tuple(config.eval.splits),
             "every split must be one of 'train', 'validation', 'test'")
  _validate_model(config)


def _validate_optimizer(config) -> None:
  """Every field that `affjax.train.optim.make_optimizer` reads."""
  optim, num_steps = config.optim, config.train.num_steps
  _positive(config, 'optim.learning_rate', 'optim.finetune_learning_rate', 'optim.eps')
  _in_range(config, 'optim.weight_decay', 0, math.inf, high_open=True)
  _in_range(config, 'optim.grad_clip_norm', 0, math.inf, high_open=True)  # 0 = no clipping
  _in_range(config, 'optim.b1', 0, 1, high_open=True)
  _in_range(config, 'optim.b2', 0, 1, high_open=True)
  _require(isinstance(optim.warmup_steps, int) and 0 <= optim.warmup_steps < num_steps, 'optim.warmup_steps',
           optim.warmup_steps, f'must be an integer in [0, config.train.num_steps={num_steps})')
  _require(isinstance(optim.restart_period, int) and optim.restart_period >= 0, 'optim.restart_period',
           optim.restart_period, 'must be an integer >= 0 (0 = one cosine decay over the run)')
  for flag in ('coupled_weight_decay', 'host_learning_rate'):
    _require(isinstance(optim[flag], bool), f'optim.{flag}', optim[flag], 'must be True or False')
  schedule = optim.schedule
  _require(schedule in optim_lib.SCHEDULES, 'optim.schedule', schedule, f'must be one of {optim_lib.SCHEDULES}')
  if schedule == 'epoch_step':
    _positive(config, 'optim.steps_per_epoch', 'optim.decay_every_epochs', 'optim.decay_factor')
    _in_range(config, 'optim.decay_after_epochs', 0, math.inf, high_open=True)


def _validate_training_scheme(config) -> None:
  """Frozen parts, two-stage fine-tuning, pretrained files and the auxiliary head fit together."""
  model, train = config.model, config.train
  modalities, frozen = tuple(model.modalities), tuple(model.frozen)
  _require(set(frozen) <= set(modalities), 'model.frozen', frozen,
           f'can only name backbones the model has: {modalities}')
  _require(0 <= train.unfreeze_step < train.num_steps, 'train.unfreeze_step', train.unfreeze_step,
           f'must be in [0, config.train.num_steps={train.num_steps})')
  _require(not train.unfreeze_step or frozen, 'train.unfreeze_step', train.unfreeze_step,
           'two-stage fine-tuning needs frozen backbones in config.model.frozen, e.g. ("visual", "audio")')
  for part, path in model.pretrained.items():
    _require(not path or pathlib.Path(path).expanduser().is_file(), f'model.pretrained.{part}', path,
             'is not a file: give the .msgpack that tools/convert_torch.py wrote, or leave it empty')
  for part in frozen:
    if not model.pretrained.get(part):
      logging.warning('config.model.frozen holds %r, which has no pretrained weights (config.model.pretrained.%s): '
                      'its random features stay fixed', part, part)
  _require(config.loss.aux_weight >= 0, 'loss.aux_weight', config.loss.aux_weight, 'must be >= 0')


def _validate_view(config) -> None:
  """The checks of the data view `config.data.view` (`affjax.data.views`)."""
  try:
    views.of(config).validate(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _validate_model(config) -> None:
  """The checks of the system `config.model.name` names (`affjax.systems`: the view it reads, its fields, its
  model built from them, which initialises nothing) before any record or feature is built."""
  try:
    systems.validate(config)
    if config.loss.aux_weight > 0 or config.compat.arousal_ccc_on_cat_logit:
      _require(systems.aux_classes(config.model) > 0, 'loss.aux_weight', config.loss.aux_weight,
               'it and config.compat.arousal_ccc_on_cat_logit need a model with an auxiliary classification head; '
               f'the {config.model.name} model has none as configured (see its config\'s variants)')
  except ValueError as e:
    raise ConfigError(str(e)) from e
