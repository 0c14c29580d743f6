"""affjax.cpu_runtime: the process settings of CPU runs."""
import os
import pathlib
import resource
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = (64 << 20) // resource.getpagesize()

# [keep_freed_memory() first if argv[1] == 'keep'] then mallocs, writes and frees a 64 MiB block ten times;
# prints whether the settings were applied and the minor page faults of the ten rounds
_REUSE = textwrap.dedent("""
    import ctypes, resource, sys
    from affjax import cpu_runtime
    applied = sys.argv[1] == 'keep' and cpu_runtime.keep_freed_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    size = 64 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
      block = libc.malloc(size)
      ctypes.memset(block, 1, size)
      libc.free(block)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _run(mode: str, **env) -> tuple[bool, int]:
  clean = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_') and k != 'GLIBC_TUNABLES'}
  out = subprocess.run([sys.executable, '-c', _REUSE, mode], env=dict(clean, **env), cwd=REPO, check=True,
                       capture_output=True, text=True).stdout.split()
  return out[-2] == 'True', int(out[-1])


def test_keep_freed_memory_reuses_a_large_block():
  """By default glibc maps a 64 MiB block anew at every malloc, so that every round faults all its pages in again;
  with the settings the freed block is reused (faulted in once)."""
  assert _run('default')[1] >= 9 * PAGES
  applied, faults = _run('keep')
  assert applied and faults <= 2 * PAGES


def test_keep_freed_memory_leaves_a_users_malloc_settings():
  applied, faults = _run('keep', MALLOC_ARENA_MAX='2')
  assert not applied and faults >= 9 * PAGES
