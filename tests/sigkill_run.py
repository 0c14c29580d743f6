"""`python -m affjax.main` that SIGKILLs itself at one point, for the crash tests (not collected by pytest).

`python tests/sigkill_run.py checkpoint:STEP <affjax.main flags>`: killed while the asynchronous checkpoint of STEP
is being written (its files are written, the atomic rename that commits them has not happened).
`python tests/sigkill_run.py committed:STEP <flags>`: killed right after the checkpoint of STEP is committed.
`python tests/sigkill_run.py evaluation <flags>`: killed when the first evaluation starts predicting.
"""
import os
import signal
import sys

from absl import app


def kill():
  os.kill(os.getpid(), signal.SIGKILL)


def main():
  point = sys.argv.pop(1)
  if point.split(':')[0] in ('checkpoint', 'committed'):
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top

    real, (when, step) = atomicity.AtomicRenameTemporaryPath.finalize, point.split(':')

    async def finalize(self, *args, **kwargs):
      if self.get_final().name == step and when == 'checkpoint':
        kill()
      result = await real(self, *args, **kwargs)
      if self.get_final().name == step:
        kill()
      return result

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
  elif point == 'evaluation':
    from affjax import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.predict_split = lambda *args, **kwargs: kill()
  else:
    raise ValueError(f'unknown kill point {point!r}')
  from affjax import main as affjax_main  # pylint: disable=g-import-not-at-top
  app.run(affjax_main.main, flags_parser=affjax_main.parse_flags)


if __name__ == '__main__':
  main()
