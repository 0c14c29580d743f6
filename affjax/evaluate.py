"""Full-video inference: overlapping windows averaged per frame, the ABAW metric and ABAW prediction files (LFAN
merges its folds' files: `affjax.systems.lfan.merge`)."""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from affjax import parallel
from affjax.data import names, pipeline, records as records_lib, views
from affjax.data.views.predictions import VideoPredictions
from affjax.train import metrics


def predict_split(state, eval_step, records: records_lib.Records, config, mesh) -> list[VideoPredictions]:
  """Runs `eval_step` over every window of every video of `records` (every process takes its share); the run's
  view (`affjax.data.views`) maps the window predictions back to the frames, `eval.smooth` smooths them."""
  smooth = tuple(config.eval.smooth)
  split = views.of(config).predictions(records, config)
  dataset, _ = pipeline.eval_dataset(records, config)
  iterator = iter(dataset)
  try:
    for batch in iterator:
      global_batch = parallel.to_global(batch, mesh)
      pred = parallel.to_host(eval_step(state, global_batch))
      rows = {k: parallel.to_host(global_batch[k])
              for k in ('video_index', 'start', 'frames', 'labels', 'label_mask', 'mask', 'face_mask', 'valid_window')
              if k in global_batch}
      for i in np.flatnonzero(rows['valid_window']):
        split.add({k: v[i] for k, v in rows.items()}, pred[i])
  finally:
    if hasattr(iterator, 'close'):
      iterator.close()
  return [dataclasses.replace(v, smooth=smooth) for v in split.videos()]


def split_metrics(videos: list[VideoPredictions]) -> dict[str, float]:
  """The ABAW metric over every annotated frame of the split, concatenated."""
  pred = np.concatenate([v.prediction[v.label_mask] for v in videos])
  target = np.concatenate([v.labels[v.label_mask] for v in videos])
  return metrics.va_metrics(pred, target)


def write_abaw_file(path: pathlib.Path, prediction: np.ndarray, num_rows: int) -> None:
  """`valence,arousal` then `num_rows` rows in [-1, 1]; rows past the video repeat its last frame."""
  rows = np.clip(prediction[np.minimum(np.arange(num_rows), len(prediction) - 1)], -1.0, 1.0)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'w') as f:
    f.write('valence,arousal\n')
    f.writelines(f'{v:.6f},{a:.6f}\n' for v, a in rows)


def read_abaw_file(path: pathlib.Path) -> np.ndarray:
  """`[N, 2]` (valence, arousal) rows of an ABAW prediction (or label) file."""
  lines = pathlib.Path(path).read_text().splitlines()
  if not lines or lines[0].strip() != 'valence,arousal':
    raise ValueError(f'{path}: expected the header "valence,arousal", got {lines[:1]}')
  return np.array([[float(v) for v in line.split(',')] for line in lines[1:]], np.float64).reshape(-1, 2)


def write_split(workdir, split: str, videos: list[VideoPredictions]) -> dict[str, float] | None:
  """Writes DIR/predictions/<split>/<video>.txt and, for annotated splits, DIR/eval/<split>/metrics.json (every path
  built by `names.inside`: a name with a separator or '..' stops the run instead of leaving DIR)."""
  for v in videos:
    write_abaw_file(names.inside(workdir, 'predictions', split, f'{v.name}.txt'), v.prediction, v.num_rows)
  if not any(v.label_mask.any() for v in videos):
    return None
  result = split_metrics(videos)
  out = names.inside(workdir, 'eval', split, 'metrics.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + '\n')
  return result


def trace_image(video: VideoPredictions, width: int = 640, height: int = 240) -> np.ndarray:
  """A [H,W,3] uint8 plot of predicted (solid) vs annotated (dots) valence (top) and arousal (bottom)."""
  image = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(image)
  n, half = len(video.counts), height // 2
  x = np.linspace(0, width - 1, n)
  for d, colour in ((0, (31, 119, 180)), (1, (214, 39, 40))):
    top = d * half

    def y(values):
      return top + (1 - (np.clip(values, -1, 1) + 1) / 2) * (half - 1)

    draw.line([(0, top + half // 2), (width, top + half // 2)], fill=(200, 200, 200))
    for xi, yi in zip(x[video.label_mask], y(video.labels[video.label_mask, d])):
      draw.point((xi, yi), fill=(0, 0, 0))
    draw.line(list(zip(x, y(video.prediction[:, d]))), fill=colour, width=2)
    draw.text((4, top + 2), ('valence', 'arousal')[d], fill=colour)
  return np.asarray(image)
