"""One job per workdir: a lock file naming its holder (host, process id, start time), held by process 0 for every
process of a multi-host job, and a start-up check that every process sees the same workdir (shared storage).

A lock is stale, and is taken over, when its holder ran on this host and that process is gone, or ran on another
host and has not refreshed the lock (a heartbeat every `HEARTBEAT_S`) for `STALE_AFTER_S`.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import socket
import threading
import time
import uuid

import jax
import numpy as np

from affjax import processes

LOCK_FILE = 'job.lock'
HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0


class WorkdirBusyError(RuntimeError):
  pass


class WorkdirNotSharedError(RuntimeError):
  pass


def _holder_is_gone(holder: dict, lock: pathlib.Path) -> bool:
  if holder.get('host') != socket.gethostname():
    try:
      return time.time() - lock.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
      return True
  return not processes.is_running(holder['pid'], holder.get('process_start'))


def _read(lock: pathlib.Path) -> dict | None:
  try:
    return json.loads(lock.read_text())
  except FileNotFoundError:
    return None
  except ValueError:  # a lock being written right now, or torn by a crash of its writer
    return {}


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host', '?')}, process id {holder.get('pid', '?')}, "
          f"started {holder.get('started', '?')}")


def _acquire(workdir: pathlib.Path) -> str:
  """Creates the lock (or takes over a stale one); returns its token. Raises WorkdirBusyError if it is held."""
  lock = workdir / LOCK_FILE
  token = uuid.uuid4().hex
  mine = dict(host=socket.gethostname(), pid=os.getpid(), process_start=processes.start_time(os.getpid()),
              started=datetime.datetime.now().astimezone().isoformat(timespec='seconds'), token=token)
  tmp = workdir / f'.{LOCK_FILE}.{token}'
  tmp.write_text(json.dumps(mine))
  try:
    for _ in range(3):
      try:
        os.link(tmp, lock)  # atomic: fails if a lock exists
        return token
      except FileExistsError:
        pass
      holder = _read(lock)
      if holder is None:
        continue
      if not holder or not _holder_is_gone(holder, lock):
        raise WorkdirBusyError(
            f'{workdir} is in use by another run ({_describe(holder)}; {lock}): one job per workdir. Wait for it '
            f'to end or give another --workdir; if that run is gone, delete {lock}')
      stale = workdir / f'.{LOCK_FILE}.stale.{token}'
      with contextlib.suppress(FileNotFoundError):
        os.rename(lock, stale)
        if _read(stale) != holder:  # another starter took the stale lock over in between: put its lock back
          with contextlib.suppress(FileExistsError):
            os.link(stale, lock)
        stale.unlink()
    raise WorkdirBusyError(f'could not take the lock {lock}: other runs are starting on {workdir}')
  finally:
    tmp.unlink()


def _share_token(token: str | None, error: str | None) -> tuple[str | None, str | None]:
  """Process 0's token (or its error) on every process."""
  if jax.process_count() == 1:
    return token, error
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  message = (error or token or '').encode()[:4096]
  buffer = np.zeros(4097, np.uint8)
  buffer[0] = error is not None
  buffer[1:1 + len(message)] = np.frombuffer(message, np.uint8)
  buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  text = bytes(buffer[1:]).rstrip(b'\0').decode()
  return (None, text) if buffer[0] else (text, None)


def _check_shared(workdir: pathlib.Path, token: str) -> None:
  """Every process reads process 0's lock; raises WorkdirNotSharedError on all of them if one cannot."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  sees = (_read(workdir / LOCK_FILE) or {}).get('token') == token
  seen = np.asarray(multihost_utils.process_allgather(np.array([sees], np.int32))).ravel()
  blind = [p for p in range(len(seen)) if not seen[p]]
  if blind:
    raise WorkdirNotSharedError(
        f'--workdir={workdir} is not shared storage: process(es) {blind} do not see the lock that process 0 wrote '
        'there. Every process of a multi-host job must use the same directory on storage all hosts share '
        '(NFS, GCS FUSE, Lustre, ...)')


@contextlib.contextmanager
def hold(workdir):
  """Holds the workdir for this job while the block runs (every process of the job enters it)."""
  workdir = pathlib.Path(workdir).expanduser().absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  token = error = None
  if jax.process_index() == 0:
    try:
      token = _acquire(workdir)
    except WorkdirBusyError as e:
      error = str(e)
  token, error = _share_token(token, error)
  if error is not None:
    raise WorkdirBusyError(error)
  stop = threading.Event()
  heartbeat = threading.Thread(target=_beat, args=(workdir / LOCK_FILE, stop), daemon=True)
  try:
    _check_shared(workdir, token)
    if jax.process_index() == 0:
      heartbeat.start()
    yield
  finally:
    stop.set()
    if jax.process_index() == 0:
      if heartbeat.is_alive():
        heartbeat.join()
      if (_read(workdir / LOCK_FILE) or {}).get('token') == token:
        (workdir / LOCK_FILE).unlink()


def _beat(lock: pathlib.Path, stop: threading.Event) -> None:
  while not stop.wait(HEARTBEAT_S):
    with contextlib.suppress(OSError):
      os.utime(lock)
