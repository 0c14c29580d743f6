"""Grain input pipeline, generic over the data views (`affjax.data.views`): the windows of the run's view,
shuffled and augmented for training or in order for evaluation, this process's share of every global batch,
read in worker processes."""
from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np

from affjax.data import records as records_lib, views
from affjax.data.views import base


@dataclasses.dataclass(frozen=True)
class EvalWindow:
  """Loads a row (video index, start, valid) of the padded evaluation table."""
  loader: base.Loader

  def __call__(self, row: np.ndarray) -> dict[str, np.ndarray]:
    return dict(self.loader(row[:2]), valid_window=np.bool_(row[2]))


def _iterate(ds: grain.MapDataset, config) -> grain.IterDataset:
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  if config.data.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.num_workers, per_worker_buffer_size=config.data.worker_buffer_size))
  return it


def per_process_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f'config batch size {global_batch_size} is not divisible by the '
                     f'{jax.process_count()} processes')
  return global_batch_size // jax.process_count()


class ProcessRows(grain.MapDataset):
  """This process's rows of every global batch of `parent`: with P processes and L rows each, rows
  [p L, (p + 1) L) of each run of P L elements. The global batch (every process's rows, in process order, as
  `parallel.to_global` places them) is then the same run of elements on any number of processes."""

  def __init__(self, parent: grain.MapDataset, rows_per_process: int):
    super().__init__(parent)
    self._rows, self._process, self._processes = rows_per_process, jax.process_index(), jax.process_count()

  def __len__(self) -> int:
    return len(self._parent) // (self._rows * self._processes) * self._rows

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._rows)
    return self._parent[(batch * self._processes + self._process) * self._rows + row]

  def __str__(self) -> str:
    return f'ProcessRows(rows_per_process={self._rows}, process={self._process} of {self._processes})'


def train_dataset(records: records_lib.Records, config) -> grain.IterDataset:
  """Endless, globally shuffled (reshuffled every epoch) training batches of this process's share.

  Augmentation is drawn per element from its index in the global stream (step x global batch + row), so a
  window gets the same crop, jitter and flip on any number of processes."""
  table, loader = views.of(config).windows(records, config, train=True)
  if len(table) == 0:
    raise ValueError(f'the {records.split} split of {records.directory} holds no video')
  ds = grain.MapDataset.source(table).shuffle(seed=config.seed).repeat()
  ds = ds.random_map(loader, seed=config.seed)
  local_batch = per_process_batch_size(config.train.batch_size)
  ds = ProcessRows(ds, local_batch).batch(local_batch, drop_remainder=True)
  return _iterate(ds, config)


def eval_dataset(records: records_lib.Records, config) -> tuple[grain.IterDataset, int]:
  """Every evaluation window of the run's view of every video, in order; this process's rows of each global
  batch.

  The table is padded with copies of its last window (flagged by `valid_window` False) to whole global
  batches. Returns the dataset and the number of real windows.
  """
  table, loader = views.of(config).windows(records, config, train=False)
  global_batch = config.eval.batch_size
  num_windows = len(table)
  padded = -(-num_windows // global_batch) * global_batch
  rows = np.concatenate([np.arange(num_windows), np.full(padded - num_windows, num_windows - 1)])
  valid = np.arange(padded) < num_windows
  local_batch = per_process_batch_size(global_batch)
  ds = grain.MapDataset.source(np.concatenate([table[rows], valid[:, None]], axis=1))
  ds = ProcessRows(ds, local_batch).map(EvalWindow(loader)).batch(local_batch, drop_remainder=False)
  return _iterate(ds, config), num_windows
