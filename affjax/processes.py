"""Whether a process of this host still runs: tells the leftovers of a killed run (a lock, a temp folder) apart."""
from __future__ import annotations

import os
import pathlib


def start_time(pid: int) -> str | None:
  """The kernel's start time of process `pid` (clock ticks since boot; None where /proc is missing), which tells
  a reused pid apart."""
  try:
    return pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def is_running(pid: int, started: str | None = None) -> bool:
  """Whether process `pid` of this host runs (and, if `started` is given and known, is the one started then)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  now = start_time(pid)
  return started is None or now is None or now == started
