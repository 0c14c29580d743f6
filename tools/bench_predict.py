"""Speed of `affjax.predict` on one video: frames/s of the whole path and each stage's share.

  python tools/bench_predict.py --config=configs/cross_attn.py [--frames=250 --width=640 --height=360] [--video=V]

The model is the config's with random weights (speed does not depend on them). Without `--video` the input is
tests/video_fixtures.py's moving photograph with a 44.1 kHz stereo track. The path (decode, detect, align,
audio, model) runs once to warm up (compilation), then `--repeats` times; prints the medians as markdown rows,
with the machine's load average.
"""
import collections
import os
import pathlib
import statistics
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_VIDEO = flags.DEFINE_string('video', '', 'A video to time; default: a generated one.')
_FRAMES = flags.DEFINE_integer('frames', 250, 'Frames of the generated video (25 fps).')
_WIDTH = flags.DEFINE_integer('width', 640, 'Width of the generated video.')
_HEIGHT = flags.DEFINE_integer('height', 360, 'Height of the generated video.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs after the warm-up run.')


def main(argv):
  del argv
  from affjax import models, parallel  # pylint: disable=g-import-not-at-top
  from affjax.train import loop, optim, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  from affjax.video import extract, run as run_lib, views  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  loop.start_process(config)
  model, mesh = models.build_model(config.model, config.compat), parallel.make_mesh()
  state = state_lib.initial_state(model, optim.make_optimizer(config, models.param_labels(config.model)), config,
                                  mesh, config.seed)
  run = run_lib.LoadedRun(config=config, mesh=mesh, state=state, eval_step=step_lib.make_eval_step(model), step=0)
  with tempfile.TemporaryDirectory() as tmp:
    video = _VIDEO.value
    if not video:
      sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'tests'))
      import video_fixtures  # pylint: disable=g-import-not-at-top
      video = os.path.join(tmp, 'astronaut.mp4')
      video_fixtures.moving_face_video(video, num_frames=_FRAMES.value, size=(_WIDTH.value, _HEIGHT.value))
    runs = []
    for _ in range(1 + _REPEATS.value):
      timings, clock = collections.Counter(), time.perf_counter()
      decoded, _ = extract.extract(video, needs_audio=run.needs_audio, timings=timings)
      model_clock = time.perf_counter()
      views.predict(decoded, run)
      timings['model'] = time.perf_counter() - model_clock
      timings['total'] = time.perf_counter() - clock
      runs.append(timings)
  n = decoded.num_frames
  median = {k: statistics.median(r[k] for r in runs[1:]) for k in runs[0]}
  print(f'load average {os.getloadavg()}, {os.cpu_count()} CPUs, {n} frames, {config.data.image_size} px faces, '
        f'{decoded.face_mask.mean():.0%} with a face')
  print('| stage | ms/frame | share |\n| --- | --- | --- |')
  for k in ('decode', 'detect', 'align', 'audio', 'model'):
    print(f'| {k} | {median[k] / n * 1000:.1f} | {median[k] / median["total"]:.0%} |')
  print(f'| whole path | {median["total"] / n * 1000:.1f} | {n / median["total"]:.1f} frames/s |')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
