"""One job per workdir, with real processes: a second launch stops naming the holder; a killed holder's lock is
taken over."""
import json
import os
import signal
import socket
import subprocess
import sys

from affjax import workdir_lock
from test_multihost import ROOT, command
from test_train_loop import smoke_config

HOLD = ('import sys, time\n'
        'from affjax import workdir_lock\n'
        'with workdir_lock.hold(sys.argv[1]):\n'
        '  print("held", flush=True)\n'
        '  time.sleep(float(sys.argv[2]))\n')


def hold(workdir, seconds: float) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-c', HOLD, str(workdir), str(seconds)], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def test_second_run_stops_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tiny_tree, tmp_path):
  workdir = tmp_path / 'run'
  holder = hold(workdir, 600)
  try:
    assert holder.stdout.readline().strip() == 'held'
    lock = json.loads((workdir / workdir_lock.LOCK_FILE).read_text())
    assert lock['pid'] == holder.pid and lock['host'] == socket.gethostname()
    second = subprocess.run(command(smoke_config(tiny_tree, tmp_path), workdir), cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert second.returncode != 0
    assert (f'is in use by another run (host {socket.gethostname()}, process id {holder.pid}, '
            f'started {lock["started"]}') in second.stderr, second.stderr[-2000:]
    assert not (workdir / 'checkpoints').exists()  # it stopped before touching anything
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert (workdir / workdir_lock.LOCK_FILE).exists()  # left behind by the killed holder: stale
  taker = hold(workdir, 0)
  out, err = taker.communicate(timeout=120)
  assert taker.returncode == 0 and out.strip() == 'held', err[-2000:]
  assert not (workdir / workdir_lock.LOCK_FILE).exists()  # released at the end
