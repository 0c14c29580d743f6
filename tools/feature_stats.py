"""Scalar mean and standard deviation of LFAN's audio features over the training partition (spec lfan 3.3).

  PYTHONPATH=. python tools/feature_stats.py --config=configs/lfan.py
  python -m affjax.main --config=configs/lfan.py --workdir=DIR --config.model.feature_norm.mfcc="(MEAN, STD)"

One mean and one std (N - 1) over every dimension and every frame of the training videos (padding excluded); every
partition is then normalised with them (the reference used each partition's own statistics, lfan bug 3).
"""
from __future__ import annotations

import jax
import numpy as np
import tqdm
from absl import app
from ml_collections import config_flags

from affjax.data import audio_features, pipeline, prepare
from affjax.models.av_model import slice_audio_windows

_CONFIG = config_flags.DEFINE_config_file('config', None, 'An LFAN config file, e.g. configs/lfan.py.')


def mfcc_statistics(records: pipeline.Records, config) -> tuple[float, float]:
  """(mean, std) of the 39-d MFCC features of every frame of `records`, each frame counted once."""
  config = config.copy_and_resolve_references()
  config.data.eval_hop = config.data.window  # windows do not overlap: each frame once
  dataset, _ = pipeline.eval_dataset(records, config)
  features = jax.jit(lambda audio, offsets: audio_features.frame_mfcc(
      slice_audio_windows(audio, offsets, audio_features.FRAME_MFCC_SAMPLES)))
  total = total_sq = count = 0.0
  for batch in tqdm.tqdm(dataset, desc=f'MFCC statistics ({records.split})', unit='batch'):
    x = np.asarray(features(batch['audio'], batch['audio_offsets']), np.float64)
    keep = batch['mask'] & batch['valid_window'][:, None]
    x = x[keep]
    total, total_sq, count = total + x.sum(), total_sq + (x * x).sum(), count + x.size
  if count < 2:
    raise ValueError(f'the {records.split} split of {records.directory} has no audio frames to take statistics of')
  mean = total / count
  return float(mean), float(np.sqrt(max(total_sq - count * mean * mean, 0.0) / (count - 1)))


def main(argv):
  del argv
  config = _CONFIG.value
  records = pipeline.open_records(prepare.records_dir(config), 'train')
  mean, std = mfcc_statistics(records, config)
  print(f'--config.model.feature_norm.mfcc="({mean!r}, {std!r})"')


if __name__ == '__main__':
  app.run(main)
