"""What a run logs: TensorBoard scalars and images (tensorboardX) and `scalars.jsonl`, written by process 0 only,
and the INFO lines of chatty libraries left out of the log."""
from __future__ import annotations

import json
import logging
import os
import pathlib

import jax
import numpy as np


class MetricWriter:
  """TensorBoard events in `logdir`, and every scalar also as a JSON line `{"step": ..., tag: value}` in
  `logdir/scalars.jsonl` (for scripts: studies, plots)."""

  def __init__(self, logdir):
    self._writer = self._jsonl = None
    self._jsonl_path = pathlib.Path(logdir) / 'scalars.jsonl'
    if jax.process_index() == 0:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._writer = tensorboardX.SummaryWriter(str(logdir))
      self._jsonl = open(self._jsonl_path, 'a', encoding='utf-8')

  def drop_rows(self, drop) -> None:
    """Removes the rows of `scalars.jsonl` for which `drop(row)` is true (a resumed or rolled-back run drops the
    rows of the steps it trains again, so that each is logged once)."""
    if self._jsonl is None:
      return
    self._jsonl.close()
    rows = [line for line in self._jsonl_path.read_text(encoding='utf-8').splitlines() if _kept(line, drop)]
    tmp = self._jsonl_path.with_name(self._jsonl_path.name + '.tmp')
    tmp.write_text(''.join(row + '\n' for row in rows), encoding='utf-8')
    os.replace(tmp, self._jsonl_path)
    self._jsonl = open(self._jsonl_path, 'a', encoding='utf-8')

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._writer is not None:
      for tag, value in values.items():
        self._writer.add_scalar(tag, float(value), step)
      self._writer.flush()
      self._jsonl.write(json.dumps(dict(step=int(step), **{k: float(v) for k, v in values.items()})) + '\n')
      self._jsonl.flush()

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    if self._writer is not None:
      self._writer.add_image(tag, image, step, dataformats='HWC')
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._jsonl.close()


def _kept(line: str, drop) -> bool:
  try:
    return not drop(json.loads(line))
  except ValueError:  # the torn last row of a killed run
    return False


_CHATTY_LIBRARIES = ('/orbax/', '/tensorflow_datasets/', '/grain/', '/jax/_src/')


def quiet_library_info() -> None:
  """Drops INFO lines of orbax, TFDS, grain and jax internals (dozens per checkpoint); warnings still show."""

  def keep(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(s in record.pathname for s in _CHATTY_LIBRARIES)

  for handler in logging.getLogger().handlers:
    handler.addFilter(keep)
