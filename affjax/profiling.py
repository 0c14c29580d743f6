"""jax.profiler traces of chosen compiled steps, for TensorBoard's profile plugin (xprof)."""
from __future__ import annotations

import logging
import os
import platform

import jax


def cpu_description() -> str:
  """The CPU model and the number of cores this process may use, e.g. 'AMD EPYC 7B13, 2 cores'."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    name = platform.processor() or platform.machine()
  return f'{name}, {len(os.sched_getaffinity(0))} cores'


class StepProfiler:
  """Traces steps [first, first + num_steps) into `logdir` (process 0 only); num_steps = 0 disables."""

  def __init__(self, logdir, *, first: int, num_steps: int):
    self._logdir, self._first, self._last = str(logdir), first, first + num_steps
    self._enabled = num_steps > 0 and jax.process_index() == 0
    self._active = False

  def before_step(self, step: int) -> None:
    if self._enabled and not self._active and self._first <= step < self._last:
      jax.profiler.start_trace(self._logdir)
      self._active = True

  def after_step(self, step: int, outputs) -> None:
    """Call with the step's outputs: the trace stops once they are computed (`step` is the one just run)."""
    if self._active and step + 1 >= self._last:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self._active, self._enabled = False, False
      logging.info('profile of steps %d-%d written to %s (tensorboard --logdir %s)', self._first,
                   self._last - 1, self._logdir, self._logdir)
