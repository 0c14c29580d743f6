"""Writes the backbones of a trained run as the files `config.model.pretrained.<part>` loads.

  python tools/export_backbones.py --config=configs/cross_attn.py --workdir=RUN --out=DIR
  python -m affjax.main --config=configs/lstm.py:frozen --workdir=DIR2 \
      --config.model.pretrained.visual=DIR/visual.msgpack --config.model.pretrained.audio=DIR/audio.msgpack

The run's best checkpoint (by validation mean CCC; else its latest) is restored with the config it was trained
with, and each backbone (`config.model.modalities`: the submodules named 'visual', 'audio') is written with its
parameters and BatchNorm statistics, in the layout `tools/convert_torch.py` writes. This turns an end-to-end run
into "pretrained" backbones for frozen or fine-tuning runs, e.g. on the synthetic tree, where no released
checkpoint applies.
"""
from __future__ import annotations

import pathlib

import jax
from absl import app, flags
from ml_collections import config_flags

from affjax import config_validation
from affjax.models import torch_convert
from affjax.train import loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The config the run was trained with.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained run (its checkpoints/).')
_OUT = flags.DEFINE_string('out', None, 'Directory the <part>.msgpack files are written to.')
flags.mark_flags_as_required(['config', 'workdir', 'out'])


def export_backbones(config, workdir: str, out: str) -> dict[str, pathlib.Path]:
  """Restores the run's best (else latest) checkpoint and writes `<out>/<part>.msgpack` for every backbone;
  returns part -> file."""
  exp = loop.Experiment(config, workdir)
  try:
    step = exp.restore_for_evaluation()
    state = jax.device_get(exp.state)
  finally:
    exp.close()
  out_dir = pathlib.Path(out).expanduser()
  out_dir.mkdir(parents=True, exist_ok=True)
  written = {}
  for part in config.model.modalities:
    if part not in state.params:
      raise ValueError(f'{workdir} (step {step}) has no backbone {part!r}: its model parts are '
                       f'{sorted(state.params)}; was it trained from a feature cache?')
    variables = {'params': state.params[part]}
    if part in state.batch_stats:
      variables['batch_stats'] = state.batch_stats[part]
    written[part] = out_dir / f'{part}.msgpack'
    torch_convert.save_variables(str(written[part]), variables)
  return written


def main(argv):
  del argv
  config_validation.validate(_CONFIG.value)
  written = export_backbones(_CONFIG.value, _WORKDIR.value, _OUT.value)
  print(' '.join(f'--config.model.pretrained.{part}={path}' for part, path in written.items()))


if __name__ == '__main__':
  app.run(main)
