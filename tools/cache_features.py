"""Runs a config's frozen backbones once over every frame of its records and writes the per-frame features.

  python tools/cache_features.py --config=configs/lstm.py:frozen --out=/data/affjax/features/lstm_frozen
  python -m affjax.main --config=configs/lstm.py:frozen --workdir=DIR --config.data.features_dir=<printed dir>

The backbones are the config's (`model.visual_backbone`, `model.audio_backbone`) with the converted
checkpoints `model.pretrained` names, or the random initialisation of `seed` (which a frozen inline run
uses too), in inference mode. Training from the cache gives the loss curve of the same frozen backbones
run inline, without face augmentation. A rerun over complete shards does nothing.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from affjax import config_validation, feature_extraction

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The config whose backbones are cached.', lock_config=True)
_OUT = flags.DEFINE_string('out', None, 'Directory for the feature records.')
_BATCH_CHUNKS = flags.DEFINE_integer('batch_chunks', 8, 'Chunks (of data.chunk_size frames) per backbone batch.')
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  del argv
  config_validation.validate(_CONFIG.value)
  directory = feature_extraction.build_cache(_CONFIG.value, _OUT.value, _BATCH_CHUNKS.value)
  print(f'feature cache ready: train from it with --config.data.features_dir={directory}')


if __name__ == '__main__':
  app.run(main)
