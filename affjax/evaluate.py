"""Full-video inference: overlapping windows averaged per frame, the ABAW metric, ABAW prediction files, and the
merge of cross-validation folds' prediction files (CCC centering)."""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import tqdm
from PIL import Image, ImageDraw

from affjax import folds, parallel
from affjax.data import names, pipeline, tokens
from affjax.train import metrics


@dataclasses.dataclass
class VideoPredictions:
  """Per-frame predictions of one video, averaged over the windows that cover each frame."""
  name: str
  num_rows: int  # rows of the ABAW file: the annotation file's rows, or every frame for test videos
  sums: np.ndarray  # [N,2]
  counts: np.ndarray  # [N]
  labels: np.ndarray  # [N,2]
  label_mask: np.ndarray  # [N]
  face_mask: np.ndarray | None = None  # [N] the frame's prediction saw a face; runs of these are smoothed
  smooth: tuple[int, int] = (0, 0)  # moving-average sizes (valence, arousal); <= 1: none

  @classmethod
  def empty(cls, video: pipeline.VideoIndex) -> 'VideoPredictions':
    n = video.num_frames
    return cls(name=video.name, num_rows=video.num_rows, sums=np.zeros((n, 2)), counts=np.zeros(n),
               labels=np.zeros((n, 2), np.float32), label_mask=np.zeros(n, bool), face_mask=np.ones(n, bool))

  def add(self, start: int, pred: np.ndarray, labels: np.ndarray, label_mask: np.ndarray, mask: np.ndarray,
          frames: np.ndarray | None = None, face_mask: np.ndarray | None = None):
    """Adds one window's [T,2] predictions at frames [start, start + T) (or at `frames` [T], e.g. the last
    frames of a window's clips) where `mask` (not padding); `face_mask` [T] marks predictions that saw a face."""
    frames = (np.arange(start, start + len(mask)) if frames is None else np.asarray(frames))[mask]
    self.sums[frames] += pred[mask]
    self.counts[frames] += 1
    self.labels[frames] = labels[mask]
    self.label_mask[frames] = label_mask[mask]
    if face_mask is not None:
      self.face_mask[frames] = face_mask[mask]

  @property
  def prediction(self) -> np.ndarray:
    if not self.counts.all():
      raise RuntimeError(f'video {self.name}: frames {np.flatnonzero(self.counts == 0)[:5]}... got no prediction')
    pred = self.sums / self.counts[:, None]
    if max(self.smooth) > 1:
      runs = np.ones(len(pred), bool) if self.face_mask is None else self.face_mask
      pred = np.stack([moving_average(pred[:, d], size, runs) for d, size in enumerate(self.smooth)], axis=-1)
    return pred


def moving_average(x: np.ndarray, size: int, valid: np.ndarray) -> np.ndarray:
  """Centred moving average of `x` [N] over frames i - size // 2 ... i + (size - 1) // 2 (scipy's
  uniform_filter1d window), normalised by the number of those frames that lie in i's run of consecutive
  `valid` frames: it never reaches across an invalid frame or the ends and never counts zeros for them.
  Invalid frames keep their value; `size` <= 1 returns `x`."""
  out = np.array(x, np.float64)
  if size <= 1:
    return out
  edges = np.flatnonzero(np.diff(np.r_[0, valid.astype(np.int8), 0]))
  for start, stop in zip(edges[::2], edges[1::2]):
    sums = np.r_[0.0, np.cumsum(out[start:stop])]
    i = np.arange(stop - start)
    lo, hi = np.maximum(i - size // 2, 0), np.minimum(i + (size - 1) // 2 + 1, stop - start)
    out[start:stop] = (sums[hi] - sums[lo]) / (hi - lo)
  return out


def video_from_frame_predictions(records: pipeline.Records, video: pipeline.VideoIndex, pred: np.ndarray,
                                 smooth: tuple[int, int]) -> VideoPredictions:
  """A video's predictions of every frame `[N, 2]` with its labels and masks read from `records`."""
  out = dataclasses.replace(VideoPredictions.empty(video), smooth=smooth)
  _, _, field = pipeline.read_frames(records, video, 0, video.num_frames)
  t = pipeline.frame_targets(field, 0, 0)
  out.add(0, pred, t['labels'], t['label_mask'], t['mask'], face_mask=t['face_mask'])
  return out


def predict_split(state, eval_step, records: pipeline.Records, config, mesh) -> list[VideoPredictions]:
  """Runs `eval_step` over every window of every video of `records` (every process takes its share).

  In the token view (`data.view = 'tokens'`) the predictions are of tokens: averaged per token over the
  windows, then interpolated to every frame (`tokens.TokenPredictions`)."""
  smooth = tuple(config.eval.smooth)
  token_view = config.data.view == 'tokens'
  videos = [tokens.TokenPredictions.empty(v, config.model.token_rate_hz) if token_view else
            dataclasses.replace(VideoPredictions.empty(v), smooth=smooth) for v in records.videos]
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
        if token_view:
          videos[rows['video_index'][i]].add(rows['start'][i], pred[i], rows['mask'][i])
          continue
        frames = rows['frames'][i] if 'frames' in rows else None
        videos[rows['video_index'][i]].add(rows['start'][i] if frames is None else 0, pred[i], rows['labels'][i],
                                           rows['label_mask'][i], rows['mask'][i], frames,
                                           rows['face_mask'][i] if 'face_mask' in rows else None)
  finally:
    if hasattr(iterator, 'close'):
      iterator.close()
  if token_view:
    return [video_from_frame_predictions(records, v.video, v.frame_prediction(), smooth) for v in videos]
  return videos


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


def merge_folds(fold_dirs: list[pathlib.Path], split: str, out: pathlib.Path) -> list[str]:
  """Merges `<fold_dir>/predictions/<split>/<video>.txt` of every fold by CCC centering (`folds.ccc_centering`,
  per video and emotion) into `<out>/predictions/<split>/<video>.txt`; returns the video names."""
  per_fold = [{p.stem: p for p in (pathlib.Path(d) / 'predictions' / split).glob('*.txt')} for d in fold_dirs]
  for d, files in zip(fold_dirs, per_fold):
    if not files:
      raise FileNotFoundError(f'{d}/predictions/{split}/ holds no prediction file: evaluate that fold first')
  videos = sorted(set.intersection(*(set(f) for f in per_fold)))
  missing = sorted(set.union(*(set(f) for f in per_fold)) - set(videos))
  if missing:
    raise ValueError(f'videos not predicted by every fold, e.g. {missing[:5]}: rerun the folds that lack them')
  for video in tqdm.tqdm(videos, desc='merge', unit='video'):
    preds = np.stack([read_abaw_file(files[video]) for files in per_fold])  # [F, N, 2]
    merged = np.stack([folds.ccc_centering(preds[:, :, d]) for d in range(2)], axis=1)
    write_abaw_file(names.inside(out, 'predictions', split, f'{video}.txt'), merged, len(merged))
  return videos


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
