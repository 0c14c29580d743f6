"""Runs a config's frozen backbones once over every frame of its records and writes the per-frame features.

  python tools/cache_features.py --config=configs/lstm.py:frozen --out=/data/affjax/features/lstm_frozen
  python -m affjax.main --config=configs/lstm.py:frozen --workdir=DIR --config.data.features_dir=<printed dir>

The backbones are the config's (`model.visual_backbone`, `model.audio_backbone`; RJCA's R(2+1)D-18 and
ResNet-18) with the converted checkpoints `model.pretrained` names, or the random initialisation of `seed`
(which a frozen inline run uses too), in inference mode. For the clip view (`configs/rjca.py`) each frame
stores the features of the clip that ends at it: the layer-4 map `[P, 512]` and the audio vector `[512]`
(P = (data.image_size / 16)^2: 49 at 112 px, about 100 KB per frame in float32). Training from the cache
gives the loss curve of the same frozen backbones run inline, without augmentation (no colour jitter of the
faces). A rerun over complete shards does nothing.
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
