"""A trained run's backbones as the files `config.model.pretrained.<part>` loads (tools/export_backbones.py).

This turns an end-to-end run into "pretrained" backbones for frozen or fine-tuning runs, e.g. on the synthetic
tree, where no released checkpoint applies.
"""
from __future__ import annotations

import pathlib

import jax

from affjax.models import torch_convert
from affjax.train import loop


def export_backbones(config, workdir: str, out: str) -> dict[str, pathlib.Path]:
  """Restores the run's best (else latest) checkpoint and writes `<out>/<part>.msgpack` for every backbone the
  config can load (`config.model.pretrained`'s parts that the model has); returns part -> file."""
  exp = loop.Experiment(config, workdir)
  try:
    step = exp.restore_for_evaluation()
    state = jax.device_get(exp.state)
  finally:
    exp.close()
  parts = [part for part in config.model.pretrained if part in state.params]
  if not parts:
    raise ValueError(f'{workdir} (step {step}) holds none of the backbones config.model.pretrained names '
                     f'({sorted(config.model.pretrained)}) in its parts {sorted(state.params)}: was it '
                     'trained from a feature cache?')
  out_dir = pathlib.Path(out).expanduser()
  out_dir.mkdir(parents=True, exist_ok=True)
  written = {}
  for part in parts:
    variables = {'params': state.params[part]}
    if part in state.batch_stats:
      variables['batch_stats'] = state.batch_stats[part]
    written[part] = out_dir / f'{part}.msgpack'
    torch_convert.save_variables(str(written[part]), variables)
  return written
