"""Checkpoints saved as upstream training code saves them, converted through tools/convert_torch.py's path."""
from __future__ import annotations

import pathlib

from affjax.models import converters


def save_and_convert(network: str, obj, path: pathlib.Path, prefix: str | None = None) -> converters.Conversion:
  """`torch.save(obj, path)` (a state dict, or a dict wrapping one), then `converters.convert_checkpoint`, the
  function the CLI runs."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.save(obj, str(path))
  return converters.convert_checkpoint(network, str(path), prefix)
