"""Writes the backbones of a trained run as the files `config.model.pretrained.<part>` loads.

  python tools/export_backbones.py --config=configs/cross_attn.py --workdir=RUN --out=DIR
  python -m affjax.main --config=configs/lstm.py:frozen --workdir=DIR2 \
      --config.model.pretrained.visual=DIR/visual.msgpack --config.model.pretrained.audio=DIR/audio.msgpack

The run's best checkpoint (by the validation selection score; else its latest) is restored with the config it
was trained with, and every backbone that `config.model.pretrained` names and the model has is written with its
parameters and BatchNorm statistics, in the layout `tools/convert_torch.py` writes (`affjax.pretrained`).
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from affjax import config_validation, pretrained

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The config the run was trained with.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained run (its checkpoints/).')
_OUT = flags.DEFINE_string('out', None, 'Directory the <part>.msgpack files are written to.')
flags.mark_flags_as_required(['config', 'workdir', 'out'])


def main(argv):
  del argv
  config_validation.validate(_CONFIG.value)
  written = pretrained.export_backbones(_CONFIG.value, _WORKDIR.value, _OUT.value)
  print(' '.join(f'--config.model.pretrained.{part}={path}' for part, path in written.items()))


if __name__ == '__main__':
  app.run(main)
