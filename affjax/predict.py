"""Per-frame valence and arousal of any video by a trained run:

  python -m affjax.predict --config=configs/cross_attn.py --workdir=RUN --video=PATH --out=DIR [--overlay]

PATH is a video file, a folder (its videos, not recursive) or a glob. Each video gives DIR/<stem>.csv
(`frame,time_s,valence,arousal,face`, one row per decoded frame), DIR/<stem>.png (the curves, frames without a
face shaded) and with --overlay DIR/<stem>.mp4. A bad video is reported on one line and the others still run.
"""
from __future__ import annotations

import collections
import glob
import logging
import pathlib
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The run\'s config, e.g. configs/cross_attn.py.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained run: its best checkpoint is used.')
_VIDEO = flags.DEFINE_string('video', None, 'A video file, a folder of videos or a glob.')
_OUT = flags.DEFINE_string('out', None, 'Folder for <stem>.csv, <stem>.png (and <stem>.mp4).')
_OVERLAY = flags.DEFINE_bool('overlay', False, 'Also write <stem>.mp4 with the face box and the values drawn.')
_DETECT_HEIGHT = flags.DEFINE_integer('detect_height', 360, 'Faces are searched in frames scaled to this height; '
                                      'raise it for faces under about an eighth of the frame height (slower).')
flags.mark_flags_as_required(['config', 'workdir', 'video', 'out'])

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv', '.3gp')


def video_paths(spec: str) -> list[pathlib.Path]:
  """The videos `spec` names: a file, a folder's files with a video extension, or a glob's matches."""
  path = pathlib.Path(spec).expanduser()
  if path.is_dir():
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not found:
      raise FileNotFoundError(f'{path}: no video file ({", ".join(VIDEO_EXTENSIONS)}) in this folder')
    return found
  if path.is_file():
    return [path]
  found = sorted(pathlib.Path(p) for p in glob.glob(str(path)) if pathlib.Path(p).is_file())
  if not found:
    raise FileNotFoundError(f'{spec}: no such video file, folder or matching glob')
  return found


def predict_file(path: pathlib.Path, run, out: pathlib.Path, overlay: bool,
                 timings: collections.Counter) -> int:
  """Writes the outputs of one video; returns its number of frames."""
  from affjax.video import extract, report, views  # pylint: disable=g-import-not-at-top

  video, boxes = extract.extract(path, needs_audio=run.needs_audio, timings=timings, progress=True,
                                 detect_height=_DETECT_HEIGHT.value)
  prediction = views.predict(video, run, timings)
  out.mkdir(parents=True, exist_ok=True)
  report.write_csv(out / f'{path.stem}.csv', video.times, prediction, video.face_mask)
  report.plot(out / f'{path.stem}.png', video.times, prediction, video.face_mask, path.name)
  if overlay:
    report.overlay(out / f'{path.stem}.mp4', path, boxes, prediction, video.fps)
  return video.num_frames


def main(argv):
  del argv
  from affjax.train import loop  # pylint: disable=g-import-not-at-top
  from affjax.video import decode, run as run_lib, views  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  try:
    views.check_supported(config)
    paths = video_paths(_VIDEO.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'affjax.predict: {e}')
  loop.start_process(config)
  try:
    run = run_lib.load_run(config, _WORKDIR.value)
  except FileNotFoundError as e:
    sys.exit(f'affjax.predict: {e}')
  out, failed = pathlib.Path(_OUT.value), 0
  for path in paths:
    timings, clock = collections.Counter(), time.perf_counter()
    try:
      n = predict_file(path, run, out, _OVERLAY.value, timings)
    except decode.VideoInputError as e:
      print(f'error: {e}', file=sys.stderr)
      failed += 1
      continue
    wall = time.perf_counter() - clock
    shares = ', '.join(f'{k} {v / wall:.0%}' for k, v in timings.most_common())
    print(f'{path}: {n} frames in {wall:.1f} s ({n / wall:.1f} frames/s; {shares}) -> {out / path.stem}.csv')
  if failed:
    sys.exit(f'affjax.predict: {failed} of {len(paths)} videos failed (see the errors above)')


if __name__ == '__main__':
  logging.getLogger('absl').setLevel(logging.WARNING)
  app.run(main)
