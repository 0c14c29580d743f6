"""Checks a config before anything is built or compiled; every error names the field and what to do."""
from __future__ import annotations

import pathlib

import jax
from absl import logging

_DTYPES = ('float32', 'bfloat16')
_MODALITIES = ('audio', 'visual')


class ConfigError(ValueError):
  pass


def _require(ok: bool, field: str, value, expected: str) -> None:
  if not ok:
    raise ConfigError(f'config.{field}={value!r} is invalid: {expected}')


def _positive(config, *fields: str) -> None:
  for field in fields:
    value = _get(config, field)
    _require(isinstance(value, (int, float)) and value > 0, field, value, 'must be a number > 0')


def _get(config, field: str):
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


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
  _require(0 <= config.optim.warmup_steps < train.num_steps, 'optim.warmup_steps', config.optim.warmup_steps,
           f'must be in [0, config.train.num_steps={train.num_steps})')
  _require(config.optim.restart_period >= 0, 'optim.restart_period', config.optim.restart_period, 'must be >= 0')
  if 'modalities' in model:
    modalities = tuple(model.modalities)
    _require(len(modalities) > 0 and set(modalities) <= set(_MODALITIES) and len(set(modalities)) == len(modalities),
             'model.modalities', modalities, f'must be a non-empty subset of {_MODALITIES}')
    if 'visual' in modalities and model.get('visual_backbone') == 'mobilefacenet':
      _require(data.image_size == 112, 'data.image_size', data.image_size,
               'MobileFaceNet needs 112x112 faces: set config.data.image_size=112')
    if 'visual' in modalities and str(model.get('visual_backbone')).startswith('vggface2_'):
      _require(data.image_size >= 195, 'data.image_size', data.image_size,
               'the VGGFace2 ResNets need faces of at least 195 px (native 224): set config.data.image_size=224')
  crop = data.get('crop_size', 0)
  _require(0 <= crop <= data.image_size, 'data.crop_size', crop,
           f'must be in [0, config.data.image_size={data.image_size}] (0 = no crop)')
  view = data.get('view', 'frames')
  _require(view in ('frames', 'clips', 'tokens'), 'data.view', view, "must be one of 'frames', 'clips', 'tokens'")
  if view == 'clips':
    _validate_clip_view(config)
  if view == 'tokens':
    _require('token_rate_hz' in model, 'data.view', view, 'needs config.model.token_rate_hz (tokens per second)')
    _positive(config, 'model.token_rate_hz')
  _validate_training_scheme(config)
  for split in config.eval.splits:
    _require(split in ('train', 'validation', 'test'), 'eval.splits', tuple(config.eval.splits),
             "every split must be one of 'train', 'validation', 'test'")


def _validate_training_scheme(config) -> None:
  """Frozen parts, two-stage fine-tuning, pretrained files and the auxiliary head fit together."""
  model, train = config.model, config.train
  modalities, frozen = tuple(model.get('modalities', ())), tuple(model.get('frozen', ()))
  _require(set(frozen) <= set(modalities), 'model.frozen', frozen,
           f'can only name backbones the model has: {modalities}')
  _require(0 <= train.unfreeze_step < train.num_steps, 'train.unfreeze_step', train.unfreeze_step,
           f'must be in [0, config.train.num_steps={train.num_steps})')
  _require(not train.unfreeze_step or frozen, 'train.unfreeze_step', train.unfreeze_step,
           'two-stage fine-tuning needs frozen backbones in config.model.frozen, e.g. ("visual", "audio")')
  for part, path in model.get('pretrained', {}).items():
    _require(not path or pathlib.Path(path).expanduser().is_file(), f'model.pretrained.{part}', path,
             'is not a file: give the .msgpack that tools/convert_torch.py wrote, or leave it empty')
  for part in frozen:
    if not model.get('pretrained', {}).get(part):
      logging.warning('config.model.frozen holds %r, which has no pretrained weights (config.model.pretrained.%s): '
                      'its random features stay fixed', part, part)
  _require(config.loss.aux_weight >= 0, 'loss.aux_weight', config.loss.aux_weight, 'must be >= 0')
  needs_aux = config.loss.aux_weight > 0 or config.compat.get('arousal_ccc_on_cat_logit', False)
  _require(not needs_aux or model.get('aux_classes', 0) == 24, 'model.aux_classes', model.get('aux_classes', 0),
           'must be 24 when config.loss.aux_weight > 0 or config.compat.arousal_ccc_on_cat_logit is set')


def _validate_clip_view(config) -> None:
  """RJCA clip windows (`data.view = 'clips'`)."""
  data = config.data
  _positive(config, 'data.num_clips')
  _require(data.image_size % 16 == 0, 'data.image_size', data.image_size,
           'must be a multiple of 16 (R(2+1)D-18 maps S x S faces to S/16 x S/16 positions; 112 gives 7 x 7)')
  _require(data.audio_frames >= 104, 'data.audio_frames', data.audio_frames,
           'must be >= 104 (clips are padded to 1.03 s = 104 log-mel frames)')
  if config.compat.get('audio_guidance_on_position_axis'):
    _require(data.image_size == 112, 'data.image_size', data.image_size,
             'compat.audio_guidance_on_position_axis needs the 49 positions of 112 px faces')
