"""One benchmark for every system and device: train step, inference, input pipeline or the predict path of an affjax
config, alone, against the upstream PyTorch code itself, or against another affjax tree; one table, one JSON.

  python tools/benchmark.py --system=cross_attn [--mode=train] [--set=train.batch_size=4 --set=data.window=8]
  python tools/benchmark.py --system=cross_attn:frozen --upstream_dir=/work/upstream --rounds=5 --json=out.json
  python tools/benchmark.py --system=cross_attn --baseline_dir=/tmp/base       # this tree vs `git archive main`
  python tools/benchmark.py --system=rjca --mode=input                         # the input pipeline alone
  python tools/benchmark.py --system=cross_attn --mode=predict [--video=V]     # affjax.predict, per stage
  python tools/benchmark.py --system=cross_attn --dtype=bfloat16 --attention_impl=cudnn   # on a GPU

`--system` is `configs/<name>.py` with its variants (`name[:variant,...]`), repeatable (one row each); `--set` changes
a config field for every row. Each side runs in its own process (affjax: tools/benchmark_affjax.py, the modes;
upstream: tools/benchmark_upstream.py, the reference models, the import shims and which systems have one; a
baseline: this tool's affjax side importing `affjax` and `configs` from `--baseline_dir`), built and warmed up
first (two untimed steps each), then their steps alternate A, B, A, B for `--rounds` rounds with a pause of
SETTLE_SECONDS before each, so that both see the same machine load. Reported per row: the median seconds per step of
each side, their ratio (affjax / other), affjax's units per second, each side's peak resident memory (the process's
VmHWM after a step, reset before it where the kernel allows, else its lifetime peak, said in the table), parameter
counts (all, and trained), and the 1-minute load average over the rounds. On a GPU both sides use it (PyTorch when
it sees one, under bfloat16 autocast when the affjax side computes in bfloat16).
"""
from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import time

from absl import app, flags

import benchmark_affjax  # pylint: disable=g-bad-import-order  (tools/, next to this file)

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC_ENV = 'AFFJAX_BENCHMARK_SPEC'  # the worker's JSON spec, set by the parent
SETTLE_SECONDS = 1.0  # pause before each timed step: OpenMP threads of the other side spin after a parallel region

_SYSTEM = flags.DEFINE_multi_string('system', [], 'configs/<name>.py and variants, e.g. cross_attn:frozen; '
                                    'repeatable (one row each).')
_MODE = flags.DEFINE_enum('mode', 'train', list(benchmark_affjax.MODES), 'What one step is.')
_SET = flags.DEFINE_multi_string('set', [], 'FIELD=VALUE config settings for every row, e.g. train.batch_size=4.')
_UPSTREAM_DIR = flags.DEFINE_string('upstream_dir', '', 'Checkouts of the upstream repositories, by name: time '
                                    'against their models (tools/benchmark_upstream.py).')
_BASELINE_DIR = flags.DEFINE_string('baseline_dir', '', 'Another affjax tree (e.g. `git archive main`): time '
                                    'against it.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Alternating timed rounds (one step per side each).')
_THREADS = flags.DEFINE_integer('threads', 0, 'PyTorch threads of the upstream side (0 = the CPU count).')
_DTYPE = flags.DEFINE_enum('dtype', '', ['', 'float32', 'bfloat16'], 'affjax train.dtype (upstream: bfloat16 '
                           'autocast); empty = the config\'s.')
_ATTENTION_IMPL = flags.DEFINE_enum('attention_impl', '', ['', 'xla', 'cudnn'], 'affjax model.attention_impl where '
                                    'the model has one; empty = the config\'s.')
_PIPELINE_BATCHES = flags.DEFINE_integer('pipeline_batches', 40, '--mode=input: batches one step reads.')
_VIDEO = flags.DEFINE_string('video', '', '--mode=predict: the video; default: a generated 250-frame one.')
_JSON = flags.DEFINE_string('json', '', 'Also write the results to this JSON file.')
_UPSTREAM_COMMITS = flags.DEFINE_list('upstream_commits', [], 'repo=commit pairs for checkouts without .git '
                                      '(exported trees).')


# ----------------------------------------------------------------------------- worker processes
def _peak_rss_reset() -> bool:
  """Resets the peak RSS to the current RSS; False where the kernel (or sandbox) does not, so that the peak
  reported is the process's lifetime peak, including the build."""
  try:
    pathlib.Path('/proc/self/clear_refs').write_text('5')
  except OSError:
    return False
  status = _proc_status_kib()
  return 'VmHWM' in status and status['VmHWM'] <= status['VmRSS'] + 4096


def _proc_status_kib() -> dict[str, int]:
  fields = {}
  for line in pathlib.Path('/proc/self/status').read_text().splitlines():
    if line.startswith(('VmHWM:', 'VmRSS:')):
      fields[line.split(':')[0]] = int(line.split()[1])
  return fields


def _peak_rss_mib() -> float:
  status = _proc_status_kib()
  if 'VmHWM' in status:
    return status['VmHWM'] / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(side: str, spec: dict) -> None:
  """Builds one side of a row, then runs a step per 'step' line on stdin and answers one JSON line per step."""
  reply = os.fdopen(os.dup(1), 'w')  # the protocol's channel; everything else printed goes to stderr
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  config = benchmark_affjax.load_config(spec['system'], spec['settings'], spec['precision'])
  if side == 'upstream':
    import benchmark_upstream  # pylint: disable=g-import-not-at-top
    run, info = benchmark_upstream.build(config, spec['mode'], spec['upstream_dir'], spec['threads'])
    name, per_window = benchmark_affjax.unit(config)
    info.update(unit=name, units=config.train.batch_size * per_window)
  else:
    from affjax.train import loop  # pylint: disable=g-import-not-at-top
    loop.start_process(config)  # as every affjax command starts (the CPU runtime settings included)
    import jax  # pylint: disable=g-import-not-at-top

    from affjax import profiling  # pylint: disable=g-import-not-at-top
    run, info = benchmark_affjax.build(config, spec['mode'], spec['pipeline_batches'], spec['video'])
    info.setdefault('framework', f'jax {jax.__version__}')
    info['device'] = f'{jax.devices()[0].device_kind} x{jax.device_count()} ({profiling.cpu_description()})'
  out = run() or {}  # compilation / first-call allocation
  print(json.dumps(dict(info, ready=True, **{k: v for k, v in out.items() if k == 'units'})), file=reply, flush=True)
  for line in sys.stdin:
    if line.strip() != 'step':
      break
    per_step = _peak_rss_reset()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = run() or {}
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    costs = {'user_s': after.ru_utime - before.ru_utime, 'system_s': after.ru_stime - before.ru_stime,
             'minor_faults': after.ru_minflt - before.ru_minflt}
    print(json.dumps(dict({'seconds': seconds, 'peak_rss_mib': _peak_rss_mib(), 'peak_per_step': per_step}, **costs,
                          **out)), file=reply, flush=True)


class _Worker:
  """A worker process of one side; `root` is the tree its `affjax` and `configs` are imported from."""

  def __init__(self, side: str, spec: dict, root: pathlib.Path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get('PYTHONPATH', '')]))
    env[SPEC_ENV] = json.dumps(spec)
    env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # a GPU shared with the other side's process
    self.side = side
    self.proc = subprocess.Popen([sys.executable, __file__, 'worker', side], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    self.info = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'the {self.side} worker died (exit {self.proc.wait()}); its stderr is above')
    return json.loads(line)

  def step(self) -> dict:
    self.proc.stdin.write('step\n')
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


# ----------------------------------------------------------------------------- one row
def median(values) -> float:
  values = sorted(values)
  mid = len(values) // 2
  return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarise(system: str, mode: str, infos: dict[str, dict], steps: dict[str, list[dict]], loads: list[float]) -> dict:
  """One row of the results from each side's ready message (`infos`) and its timed steps: medians, ratio, rate."""
  sides = {}
  for side, results in steps.items():
    info = infos[side]
    seconds = [r['seconds'] for r in results]
    stages = {k: median([r['stages'].get(k, 0.0) for r in results]) for k in results[0].get('stages', {})}
    units = results[-1].get('units', info.get('units', 0))
    sides[side] = dict(median_s=median(seconds), seconds=seconds, units=units,
                       rate=units / median(seconds) if units else None,
                       peak_rss_mib=max(r['peak_rss_mib'] for r in results),
                       peak_per_step=all(r['peak_per_step'] for r in results),
                       **{k: [r[k] for r in results] for k in ('user_s', 'system_s', 'minor_faults')},
                       **{k: info[k] for k in ('params', 'trainable', 'framework', 'device', 'detail') if k in info},
                       **({'stages': stages} if stages else {}))
  other = next((s for s in sides if s != 'affjax'), None)
  return dict(system=system, mode=mode, unit=infos['affjax'].get('unit', ''), units=sides['affjax']['units'],
              other=other, sides=sides,
              ratio=sides['affjax']['median_s'] / sides[other]['median_s'] if other else None,
              load=[min(loads), max(loads)])


def measure(system: str, spec: dict, other: tuple[str, pathlib.Path] | None, rounds: int) -> dict:
  """Builds the affjax side (and `other`: ('upstream' | 'baseline', its root)), runs two untimed steps each, then
  `rounds` alternating timed rounds; returns the row (`summarise`)."""
  spec = dict(spec, system=system)
  workers = {'affjax': _Worker('affjax', spec, REPO)}
  try:
    if other:
      workers[other[0]] = _Worker('upstream' if other[0] == 'upstream' else 'affjax', spec, other[1])
    for w in workers.values():  # a second untimed step each (allocator, caches)
      w.step()
    steps, loads = {s: [] for s in workers}, []
    for _ in range(rounds):
      for side, w in workers.items():
        time.sleep(SETTLE_SECONDS)
        steps[side].append(w.step())
      loads.append(os.getloadavg()[0])
  finally:
    for w in workers.values():
      w.close()
  return summarise(system, spec['mode'], {s: w.info for s, w in workers.items()}, steps, loads)


# ----------------------------------------------------------------------------- output
def commit(path: pathlib.Path, given: dict[str, str] | None = None) -> str:
  if given and path.name in given:
    return given[path.name][:10]
  try:
    return subprocess.run(['git', '-C', str(path), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                          check=True).stdout.strip()[:10]
  except (subprocess.CalledProcessError, FileNotFoundError):
    return 'unknown'


def _number(value, fmt: str) -> str:
  return '-' if value is None else format(value, fmt)


def _count(side: dict | None) -> str:
  if not side or 'params' not in side:
    return '-'
  return f"{side['params']:,} ({side['trainable']:,})".replace(',', ' ')


def table(result: dict) -> str:
  """The markdown table of `result` (the JSON document): a header line, then one row per system."""
  rows = result['rows']
  label = next((r['other'] for r in rows if r['other']), None) or 'other'
  settings = f"; settings {' '.join(result['settings'])}" if result.get('settings') else ''
  lines = [f"device: {result['device']}; {result['precision']}; {result['frameworks']}; commits {result['commits']}"
           f"{settings}; medians of {result['rounds']} alternating rounds after 2 untimed steps per side",
           f'| system | mode | step | {label} s/step | affjax s/step | affjax / {label} | affjax units/s | '
           f'peak RSS MiB {label} / affjax | params {label} / affjax (trained) | load (1 min) |',
           '|---|---|---|---|---|---|---|---|---|---|']
  stage_lines = []
  for r in rows:
    mine, theirs = r['sides']['affjax'], r['sides'].get(r['other'] or '')
    lifetime = '' if all(s['peak_per_step'] for s in r['sides'].values()) else ' (process lifetime)'
    rss = f"{_number(theirs and theirs['peak_rss_mib'], '.0f')} / {mine['peak_rss_mib']:.0f}{lifetime}"
    lines.append(f"| {r['system']} | {r['mode']} | {r['units']} {r['unit']} | "
                 f"{_number(theirs and theirs['median_s'], '.3f')} | {mine['median_s']:.3f} | "
                 f"{_number(r['ratio'], '.2f')} | {_number(mine['rate'], '.1f')} {r['unit']}/s | {rss} | "
                 f"{_count(theirs)} / {_count(mine)} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |")
    for side, values in r['sides'].items():
      if 'stages' in values and values['units']:
        per_frame = ', '.join(f'{k} {v / values["units"] * 1000:.1f}' for k, v in values['stages'].items())
        stage_lines.append(f'{side} stages of {r["system"]}, ms/frame: {per_frame}')
  return '\n'.join(lines + stage_lines)


def run(systems: list[str], mode: str, settings: list[str], rounds: int, upstream_dir: str = '', baseline_dir: str = '',
        threads: int = 0, precision: dict[str, str] | None = None, pipeline_batches: int = 40, video: str = '',
        upstream_commits: dict[str, str] | None = None) -> dict:
  """Measures every system; returns the JSON document (device, load, commits, rows)."""
  if upstream_dir and baseline_dir:
    raise ValueError('--upstream_dir and --baseline_dir: give one of them (the other side of the comparison)')
  if not systems:
    raise ValueError('--system is required, e.g. --system=cross_attn')
  if rounds < 1:
    raise ValueError(f'--rounds={rounds}: needs at least 1')
  precision = precision or {}
  spec = dict(mode=mode, settings=list(settings), precision=precision, upstream_dir=upstream_dir,
              threads=threads or os.cpu_count(), pipeline_batches=pipeline_batches, video=video)
  other = (('upstream', REPO) if upstream_dir else ('baseline', pathlib.Path(baseline_dir).resolve()) if baseline_dir
           else None)
  commits = {'affjax': commit(REPO)}
  if baseline_dir:
    commits['baseline'] = commit(pathlib.Path(baseline_dir))
  if upstream_dir:  # every row checked before anything is built
    import benchmark_upstream  # pylint: disable=g-import-not-at-top
    for system in systems:
      config = benchmark_affjax.load_config(system, settings, precision)
      benchmark_upstream.check(config, system, mode, upstream_dir)
      for repo in benchmark_upstream.repositories(config.model.name):
        commits[repo] = commit(pathlib.Path(upstream_dir) / repo, upstream_commits)
  load_before = os.getloadavg()[0]
  rows = [measure(system, spec, other, rounds) for system in systems]
  frameworks = sorted({s['framework'] for r in rows for s in r['sides'].values() if 'framework' in s})
  return dict(command=' '.join(sys.argv), device=rows[0]['sides']['affjax'].get('device', ''),
              cpus=os.cpu_count(), load_before=load_before, precision=precision or 'the configs\' precision',
              frameworks=', '.join(frameworks), threads=spec['threads'], commits=commits, rounds=rounds,
              settle_s=SETTLE_SECONDS, settings=list(settings), rows=rows)


def main(argv):
  del argv
  precision = {k: v for k, v in (('dtype', _DTYPE.value), ('attention_impl', _ATTENTION_IMPL.value)) if v}
  try:
    result = run(_SYSTEM.value, _MODE.value, _SET.value, _ROUNDS.value, _UPSTREAM_DIR.value, _BASELINE_DIR.value,
                 _THREADS.value, precision, _PIPELINE_BATCHES.value, _VIDEO.value,
                 dict(pair.split('=', 1) for pair in _UPSTREAM_COMMITS.value))
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  print(table(result), flush=True)
  if _JSON.value:
    pathlib.Path(_JSON.value).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(_JSON.value).write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
  if sys.argv[1:2] == ['worker']:
    worker(sys.argv[2], json.loads(os.environ[SPEC_ENV]))
  else:
    app.run(main)
