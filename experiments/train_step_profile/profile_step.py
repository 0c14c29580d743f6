"""Where the time of one compiled train step goes on XLA:CPU: the step of a `tools/benchmark.py` system (the same
config, batch and random inputs as the side-by-side benchmark), timed, then traced with `jax.profiler` and its
thunks summed by what they compute (the `op_name` metadata of each instruction of the compiled HLO).

  PYTHONPATH=. python experiments/train_step_profile/profile_step.py [--system=cross_attn] [--set=FIELD=VALUE] [--steps=5] [--top=30]

Prints markdown: the step's median wall time, the traced step's busy time per thread, the time by part (visual
backbone, audio backbone, fusion and head, loss and optimiser) and pass (forward, backward), the largest items by
layer and operation, and with `--pieces` the backbones' train gradients timed alone. XLA_FLAGS in the environment
apply as usual (e.g. to compare XLA:CPU options).
"""
from __future__ import annotations

import collections
import gzip
import json
import os
import pathlib
import re
import resource
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tools'))

SYSTEM = flags.DEFINE_string('system', 'cross_attn', 'configs/<name>.py and variants, as tools/benchmark.py takes.')
SET = flags.DEFINE_multi_string('set', [], 'FIELD=VALUE config settings, as tools/benchmark.py takes.')
STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps after two warm-up steps (median).')
_TOP = flags.DEFINE_integer('top', 30, 'Rows of the table of the largest items.')
_PIECES = flags.DEFINE_bool('pieces', False, 'Also time the train gradient of each backbone alone.')
_TRACED = flags.DEFINE_integer('traced_steps', 3, 'Steps in the trace (the sums are per step).')


def median_seconds(fn, steps: int) -> float:
  return float(median_costs(fn, steps)[0])


def median_costs(fn, steps: int):
  """Medians over `steps` calls after two warm-up calls: wall, user and system CPU seconds, minor page faults."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  for _ in range(2):
    fn()
  costs = []
  for _ in range(steps):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    costs.append((wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                  after.ru_minflt - before.ru_minflt))
  return np.median(np.array(costs), axis=0)


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its `op_name` metadata, over every computation of a compiled module's text."""
  names = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', line)
    if m:
      names[m.group(1)] = m.group(2)
  return names


def classify(op_name: str) -> tuple[str, str, str, str]:
  """(part, pass, layer, operation) of an instruction from its op_name, e.g. 'jit(train_step)/transpose(jvp(
  AudioVisualModel))/AudioVisualModel._backbone/visual/dw3/expand/bn/reduce_sum' -> ('visual', 'bwd',
  'dw/expand/bn', 'reduce_sum'); block numbers are dropped so that the repeated blocks add up. The model is the
  module the step differentiates (`jvp(<Model>)`; any model class), its method scopes (`<Model>.<method>`) are
  left out; the rest is the loss and the optimiser."""
  if not op_name:
    return ('unlabelled', '', '', '')
  backward = 'transpose(' in op_name
  parts = [p for p in op_name.split('/') if p and not p.startswith(('jit(', 'jvp(', 'transpose(', 'checkpoint'))
           and not re.fullmatch(r'\w+Model\.\w+', p)]
  if not re.search(r'jvp\(\w+Model\)', op_name) or len(parts) < 2:
    return ('loss, optimiser', 'bwd' if backward else 'fwd', '', parts[-1] if parts else op_name)
  part = parts[0] if parts[0] in ('visual', 'audio', 'fusion', 'va', 'cat') else 'model'
  part = {'va': 'head', 'cat': 'head'}.get(part, part)
  layer = '/'.join(re.sub(r'\d+$', '', p) for p in parts[1:-1] if not p.startswith('fusion._'))
  return (part, 'bwd' if backward else 'fwd', layer, parts[-1])


def trace_events(logdir: str) -> list[dict]:
  path = sorted(pathlib.Path(logdir).glob('**/*.trace.json.gz'))[-1]
  with gzip.open(path) as f:
    data = json.load(f)
  return data['traceEvents'] if isinstance(data, dict) else data


def profile(step, steps_in_trace: int, names: dict[str, str]):
  """Traces `steps_in_trace` calls of `step`; returns (seconds per step by classify() key, busy seconds per
  thread per step, wall seconds per step)."""
  import jax  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir, create_perfetto_trace=True)
    start = time.perf_counter()
    for _ in range(steps_in_trace):
      step()
    wall = (time.perf_counter() - start) / steps_in_trace
    jax.profiler.stop_trace()
    events = trace_events(logdir)
  by_item, by_thread = collections.Counter(), collections.Counter()
  for e in events:  # leaf events are the instructions; 'Thunk*' / '$*' / 'Pjit*' events enclose them
    if e.get('ph') != 'X' or e['name'] not in names and not e['name'].startswith(('wrapped_', 'fusion', 'ynn_')):
      continue
    seconds = e['dur'] / 1e6 / steps_in_trace
    by_item[classify(names.get(e['name'], ''))] += seconds
    by_thread[e.get('tid')] += seconds
  return by_item, by_thread, wall


def print_profile(by_item, by_thread, wall: float, top: int) -> None:
  busy = sum(by_thread.values())
  print(f'traced step: {wall:.3f} s wall, {busy:.3f} s busy over {len(by_thread)} threads '
        f'({", ".join(f"{s:.3f}" for s in sorted(by_thread.values(), reverse=True))})\n')
  print('| part | pass | s per step | share of busy |\n|---|---|---|---|')
  totals = collections.Counter()
  for (part, pas, _, _), s in by_item.items():
    totals[(part, pas)] += s
  for (part, pas), s in sorted(totals.items(), key=lambda kv: -kv[1]):
    print(f'| {part} | {pas} | {s:.3f} | {s / busy:.0%} |')
  print(f'\n| part | pass | layer | operation | ms per step |\n|---|---|---|---|---|')
  for (part, pas, layer, op), s in by_item.most_common(top):
    print(f'| {part} | {pas} | {layer} | {op} | {1e3 * s:.1f} |')


def backbone_pieces(config, batch, steps: int) -> None:
  """The train gradient (train-mode BatchNorm, parameters only) of each backbone alone, on the case's inputs."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from affjax.models.audio.frame_windows import slice_audio_windows  # pylint: disable=g-import-not-at-top
  from affjax.models.backbones.audio1d import AUDIO_CNN_TABLES, AudioCNN1D  # pylint: disable=g-import-not-at-top
  from affjax.models.backbones.mobilefacenet import MobileFaceNet  # pylint: disable=g-import-not-at-top
  b, t = batch['mask'].shape
  faces = jnp.asarray(batch['faces']).reshape(b * t, *batch['faces'].shape[2:]).astype(jnp.float32) / 255.0
  windows = slice_audio_windows(jnp.asarray(batch['audio']), jnp.asarray(batch['audio_offsets']),
                                config.model.audio_window).reshape(b * t, -1)
  print('\n| piece | s per call |\n|---|---|')
  for name, net, x in (('MobileFaceNet train gradient', MobileFaceNet(), faces),
                       ('Zhao19 train gradient', AudioCNN1D(AUDIO_CNN_TABLES[config.model.audio_backbone]), windows)):
    variables = net.init(jax.random.key(0), x, train=False)

    def loss(params, stats, x, net=net):
      out, _ = net.apply({'params': params, 'batch_stats': stats}, x, train=True, mutable=['batch_stats'])
      return jnp.sum(out * jnp.cos(jnp.arange(out.shape[-1], dtype=out.dtype)))

    grad = jax.jit(jax.grad(loss))
    run = lambda grad=grad, v=variables, x=x: jax.block_until_ready(grad(v['params'], v['batch_stats'], x))
    print(f'| {name}, {x.shape[0]} inputs | {median_seconds(run, steps):.3f} |', flush=True)


def build_step(system: str, settings):
  """The train step of `system` as tools/benchmark.py builds it (config, batch, random inputs), after the process
  setup every affjax command does: (config, host batch, step: runs one step and waits for it, compiled: the
  compiled step, whose HLO and cost analysis describe what step() runs)."""
  import jax  # pylint: disable=g-import-not-at-top
  import benchmark_affjax  # pylint: disable=g-import-not-at-top

  from affjax import parallel, systems  # pylint: disable=g-import-not-at-top
  from affjax.train import loop, optim, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  config = benchmark_affjax.load_config(system, settings)
  loop.start_process(config)  # as every affjax command starts
  mesh = parallel.make_mesh()
  model = systems.build_model(config.model, config.compat)
  tx = optim.make_optimizer(config, systems.param_labels(config.model))
  state = state_lib.initial_state(model, tx, config, mesh, seed=0)
  host_batch = benchmark_affjax.random_batch(config)
  with jax.set_mesh(mesh):
    batch = parallel.to_global(host_batch, mesh)
    carry = [state, jax.device_put(step_lib.zero_accumulator(), parallel.replicated(mesh))]
    train_step = step_lib.make_train_step(model, tx, config)
    compiled = train_step.lower(*carry, batch).compile()

  def step():
    with jax.set_mesh(mesh):
      carry[:] = train_step(*carry, batch)
      jax.block_until_ready(carry[1])
  return config, host_batch, step, compiled


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  from affjax import profiling  # pylint: disable=g-import-not-at-top
  config, host_batch, step, compiled = build_step(SYSTEM.value, SET.value)
  print(f'train step, configs/{SYSTEM.value}, batch {config.train.batch_size} x {config.data.window}; {jax.devices()[0].device_kind} ({profiling.cpu_description()}), '
        f'jax {jax.__version__}; load {" ".join(f"{x:.1f}" for x in os.getloadavg())}')
  wall, user, system, faults = median_costs(step, STEPS.value)
  print(f'median step ({STEPS.value} steps after 2 warm-up steps): {wall:.3f} s wall, CPU {user:.2f} s user + '
        f'{system:.2f} s system, {faults:.0f} minor page faults')
  print_profile(*profile(step, _TRACED.value, op_names(compiled.as_text())), _TOP.value)
  if _PIECES.value:
    backbone_pieces(config, host_batch, STEPS.value)


if __name__ == '__main__':
  app.run(main)
