"""Process-wide settings for running XLA:CPU steps fast, applied where a process starts (`train.loop.start_process`)."""
from __future__ import annotations

import ctypes
import logging
import os

# mallopt() parameters of glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """Has glibc's malloc keep the memory a step frees for the next step instead of returning it to the kernel.

  XLA:CPU allocates the buffers of every executed step anew and frees them after it. glibc serves large blocks
  with mmap and unmaps them on free (always so above 64 MiB in the per-thread arenas of XLA's threads), so that each
  step page-faults its whole working set in again and the kernel zeroes it: the cross_attn step, 780 k minor page
  faults and 45 % of its CPU time in the kernel (experiments/train_step_profile). With one arena, no mmap and no
  trimming, freed blocks are reused by the next step. The resident memory then stays at the peak of a step between
  steps, which every step reaches anyway. Call it before jax starts its threads (before the backend starts).
  Nothing is changed when the user tunes malloc through the environment (GLIBC_TUNABLES, MALLOC_*). Returns
  whether the settings were applied (False elsewhere, e.g. another C library)."""
  if 'GLIBC_TUNABLES' in os.environ or any(k.startswith('MALLOC_') for k in os.environ):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  # -1 is SIZE_MAX once glibc converts it to size_t: never trim
  return all(mallopt(param, value) for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))


def configure() -> None:
  """The settings above, logged (harmless where the step runs on a GPU: the host then frees little)."""
  logging.info('glibc malloc keeps freed memory for the next step: %s', keep_freed_memory())
