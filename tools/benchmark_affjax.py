"""The affjax side of tools/benchmark.py: a system's config with the command's settings, a random batch of its
shapes, and the work one timed step of each mode does:
  train    the jitted train step (forward, loss, backward, optimiser update) on one fixed batch already on device
  infer    the jitted eval step on that batch
  input    the input pipeline alone with the config's worker processes: `pipeline_batches` batches read as fast
           as they come; its time per batch is taken over the second half (the first drains what was prefetched)
  predict  `affjax.predict`'s whole path on one video (decode, detect, align, audio, features, model), per-stage times
The model has random weights (speed does not depend on them). Steady state: schedules that change a step's cost
in the first steps are off (sparse_e2e `model.top_p_warmup_steps = 0`), feature statistics are (0, 1).
"""
from __future__ import annotations

import ast
import collections
import importlib
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

FPS = 30.0
MODES = ('train', 'infer', 'input', 'predict')


def parse_system(system: str) -> tuple[str, str]:
  """'cross_attn:frozen' (or 'configs/cross_attn.py:frozen') -> ('cross_attn', 'frozen')."""
  name, _, variants = system.partition(':')
  return pathlib.Path(name).stem, variants


def parse_setting(text: str) -> tuple[list[str], object]:
  """'model.ir50_units=(3,4,14,3)' -> (['model', 'ir50_units'], (3, 4, 14, 3)); values as Python literals, else
  strings."""
  path, sep, value = text.partition('=')
  if not sep or not path:
    raise ValueError(f'--set={text!r}: expected FIELD=VALUE, e.g. --set=train.batch_size=4')
  try:
    value = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    pass  # a plain string, e.g. --set=train.dtype=bfloat16
  return path.split('.'), value


def load_config(system: str, settings=(), precision: dict[str, str] | None = None):
  """The config of `system` ('name[:variants]', configs/<name>.py) with `settings` ('field=value') applied;
  `precision` may set 'dtype' (train.dtype) and 'attention_impl' (model.attention_impl, where the model has one)."""
  name, variants = parse_system(system)
  try:
    module = importlib.import_module(f'configs.{name}')
  except ModuleNotFoundError as e:
    if e.name != f'configs.{name}':
      raise
    raise ValueError(f'--system={system!r}: there is no configs/{name}.py') from e
  config = module.get_config(variants)
  for text in settings:
    path, value = parse_setting(text)
    node = config
    for key in path[:-1]:
      if key not in node:
        raise ValueError(f'--set={text!r}: the config has no section {key!r}')
      node = node[key]
    if path[-1] not in node:
      raise ValueError(f'--set={text!r}: the config has no field {".".join(path)}')
    node[path[-1]] = value
  precision = precision or {}
  if precision.get('dtype'):
    config.train.dtype = precision['dtype']
  if precision.get('attention_impl') and 'attention_impl' in config.model:
    config.model.attention_impl = precision['attention_impl']
  if 'top_p_warmup_steps' in config.model:
    config.model.top_p_warmup_steps = 0
  for feature, stats in config.model.get('feature_norm', {}).items():
    if not stats:
      config.model.feature_norm[feature] = (0.0, 1.0)
  return config


def unit(config) -> tuple[str, int]:
  """What one window holds ('frames', 'clips' or 'tokens') and how many of them (the view's `unit`)."""
  from affjax.data import views  # pylint: disable=g-import-not-at-top
  return views.of(config).unit(config)


def random_batch(config) -> dict[str, np.ndarray]:
  """A pipeline batch of `config.train.batch_size` windows with random faces, audio and labels, every frame valid;
  frame-view audio windows centred on their frames, the other views' windows at the segment's start."""
  from affjax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  rng, b = np.random.default_rng(0), config.train.batch_size
  out = state_lib.example_batch(config, b)
  t = out['mask'].shape[1]
  for key, value in out.items():
    if value.dtype == np.uint8:
      out[key] = rng.integers(0, 256, value.shape, dtype=np.uint8)
    elif value.dtype == np.float32:
      out[key] = rng.uniform(-1, 1, value.shape).astype(np.float32)
  if 'clip_audio_samples' in out:  # every clip's audio span complete
    out['clip_audio_samples'][:] = out['clip_audio'].shape[-1]
  if unit(config)[0] == 'frames' and 'audio_offsets' in out:
    starts = np.floor((np.arange(t) + 0.5) * 16000 / FPS).astype(np.int32)  # window t centred on frame t
    out['audio_offsets'] = np.broadcast_to(starts, (b, t)).copy()
  return dict(out, labels=rng.uniform(-1, 1, (b, t, 2)).astype(np.float32), label_mask=np.ones((b, t), bool),
              face_mask=np.ones((b, t), bool))


def param_counts(config, params) -> tuple[int, int]:
  """(all, trained) parameter counts: the trained ones are those the optimiser does not hold fixed."""
  import jax  # pylint: disable=g-import-not-at-top
  from affjax import systems  # pylint: disable=g-import-not-at-top
  size = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))
  labels, frozen = systems.param_labels(config.model), tuple(config.model.frozen)
  if labels is None and not frozen:
    return size(params), size(params)
  tree = labels(params) if labels is not None else {k: 'frozen' if k in frozen else 'train' for k in params}
  trained = jax.tree.map(lambda label, sub: size(sub) if label == 'train' else 0, tree, params)
  return size(params), int(sum(jax.tree.leaves(trained)))


def build(config, mode: str, pipeline_batches: int = 40, video: str = ''):
  """(run, info): run() does one step of `mode` and waits for it, returning None or a dict that may hold the
  step's own 'seconds' (input: per batch) and 'stages' (predict); info: units per step, parameter counts."""
  if mode == 'input':
    return _input_runner(config, pipeline_batches)
  if mode == 'predict':
    return _predict_runner(config, video)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from affjax import parallel, systems  # pylint: disable=g-import-not-at-top
  from affjax.train import optim, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh()
  model = systems.build_model(config.model, config.compat)
  tx = optim.make_optimizer(config, systems.param_labels(config.model))
  host = random_batch(config)
  first = {k: v[:1] for k, v in host.items()}  # one window: LFAN needs its feature inputs to initialise
  with jax.set_mesh(mesh):
    batch = parallel.to_global(host, mesh)

    def create(key):
      variables = model.init({'params': key, 'dropout': key}, first, train=False)
      return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                                  batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(variables['params']),
                                  rng=jax.random.fold_in(key, 1))
    state = jax.jit(create, out_shardings=parallel.replicated(mesh))(jax.random.key(0))
  name, per_window = unit(config)
  total, trained = param_counts(config, state.params)
  info = dict(unit=name, units=config.train.batch_size * per_window, params=total, trainable=trained,
              framework=f'jax {jax.__version__}')
  if mode == 'infer':
    eval_step = step_lib.make_eval_step(model)

    def infer():
      with jax.set_mesh(mesh):
        jax.block_until_ready(eval_step(state, batch))
    return infer, info
  train_step = step_lib.make_train_step(model, tx, config)
  with jax.set_mesh(mesh):
    carry = [state, jax.device_put(step_lib.zero_accumulator(), parallel.replicated(mesh))]

  def train():
    with jax.set_mesh(mesh):
      carry[:] = train_step(*carry, batch)
      jax.block_until_ready(carry[1])
  return train, info


def _input_runner(config, pipeline_batches: int):
  from affjax import config_validation, systems  # pylint: disable=g-import-not-at-top
  from affjax.data import pipeline, prepare, records  # pylint: disable=g-import-not-at-top
  if pipeline_batches < 4:
    raise ValueError(f'--pipeline_batches={pipeline_batches}: needs at least 4 (the rate is taken over the second '
                     'half)')
  config_validation.validate(config)
  with tempfile.TemporaryDirectory() as workdir:  # LFAN: follower features and statistics, as a run prepares them
    config = systems.prepare(config, prepare.input_dir(config), workdir)
  records = records.open_partition(prepare.input_dir(config), 'train', config)
  it = iter(pipeline.train_dataset(records, config))

  def read():
    times = []
    for _ in range(pipeline_batches):  # as fast as the workers deliver
      next(it)
      times.append(time.perf_counter())
    half = len(times) // 2
    return {'seconds': (times[-1] - times[half]) / (len(times) - 1 - half)}
  name, per_window = unit(config)
  return read, dict(unit=name, units=config.train.batch_size * per_window,
                    detail=f'{config.data.num_workers} workers, {pipeline_batches} batches a step')


def _predict_runner(config, video: str):
  from affjax.video import extract, run as run_lib, views  # pylint: disable=g-import-not-at-top
  loaded = run_lib.new_run(config, config.seed)
  tmp = tempfile.TemporaryDirectory()  # the generated video lives as long as the runner
  if not video:  # tests/video_fixtures.py's moving photograph with a 44.1 kHz stereo track, 250 frames at 640 x 360
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'tests'))
    import video_fixtures  # pylint: disable=g-import-not-at-top
    video = os.path.join(tmp.name, 'astronaut.mp4')
    video_fixtures.moving_face_video(video, num_frames=250, size=(640, 360))

  def run():
    timings = collections.Counter()
    decoded, _ = extract.extract(video, needs_audio=loaded.needs_audio, timings=timings)
    views.predict(decoded, loaded, timings)
    return {'stages': dict(timings), 'units': decoded.num_frames}
  run.video_dir = tmp  # removed with the runner
  return run, dict(unit='frames', units=0, detail=f'video {video}')
