"""Computes LFAN's VGGish features of every frame of a config's records once (a progress bar per split).

  PYTHONPATH=. python tools/vggish_features.py --config=configs/lfan.py [--out=DIR]
      [--config.model.pretrained.vggish=vggish.msgpack]

Each video frame i gets the raw 128-d VGGish embedding of the 0.96 s log-mel example starting at i / fps (spec lfan
3.1, `affjax.models.backbones.vggish.frame_examples`), from the converted weights `model.pretrained.vggish`
(`tools/convert_torch.py --network=vggish`) or the random initialisation of `seed`. Without --out the features go
where a training run looks for them first (next to the records), so `python -m affjax.main --config=configs/lfan.py`
finds them; with --out, pass the printed `--config.data.side_features_dir=...`. A rerun over complete shards does
nothing.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from affjax import config_validation
from affjax.systems.lfan import followers
from affjax.data import feature_cache, prepare

_CONFIG = config_flags.DEFINE_config_file('config', None, 'An LFAN config, e.g. configs/lfan.py.', lock_config=True)
_OUT = flags.DEFINE_string('out', '', 'Directory for the feature records (default: next to the records).')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  config = _CONFIG.value
  config_validation.validate(config)
  records_dir = prepare.records_dir(config)
  out = _OUT.value or followers.default_vggish_dir(config, records_dir)
  directory = followers.build_vggish(config, records_dir, out)
  print(f'VGGish features ready: {directory}')
  if _OUT.value:
    print(f'train with --config.data.side_features_dir={feature_cache.dataset_dir(_OUT.value)}')


if __name__ == '__main__':
  app.run(main)
