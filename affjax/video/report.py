"""What `affjax.predict` writes per video: the CSV, the plot, and the overlay video."""
from __future__ import annotations


import av
import numpy as np
from PIL import Image, ImageDraw

from affjax.video import decode

HEADER = 'frame,time_s,valence,arousal,face'


def write_csv(path, times: np.ndarray, prediction: np.ndarray, face_mask: np.ndarray) -> None:
  """One row per decoded frame: `frame,time_s,valence,arousal,face` (frame 0-based, values clipped to [-1, 1])."""
  pred = np.clip(prediction, -1.0, 1.0)
  rows = (f'{k},{t:.4f},{v:.6f},{a:.6f},{int(f)}\n' for k, (t, (v, a), f) in enumerate(zip(times, pred, face_mask)))
  with open(path, 'w') as f:
    f.write(HEADER + '\n')
    f.writelines(rows)


def plot(path, times: np.ndarray, prediction: np.ndarray, face_mask: np.ndarray, title: str,
         width: int = 960, height: int = 360) -> None:
  """A PNG of valence (blue) and arousal (red) in [-1, 1] against time; frames without a face shaded grey."""
  image = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(image)
  left, right, top, bottom = 40, width - 10, 24, height - 24
  span = max(float(times[-1]), 1e-6)
  x = left + times / span * (right - left)
  y = lambda v: top + (1 - (np.clip(v, -1, 1) + 1) / 2) * (bottom - top)
  edges = np.flatnonzero(np.diff(np.r_[1, face_mask.astype(np.int8), 1]))
  step = (right - left) / max(len(times) - 1, 1)
  for start, stop in zip(edges[::2], edges[1::2]):  # runs of faceless frames
    draw.rectangle([x[start] - step / 2, top, x[stop - 1] + step / 2, bottom], fill=(225, 225, 225))
  for value in (-1, 0, 1):
    draw.line([(left, y(value)), (right, y(value))], fill=(160, 160, 160) if value == 0 else (210, 210, 210))
    draw.text((4, y(value) - 6), f'{value:+d}', fill=(90, 90, 90))
  for d, colour in ((0, (31, 119, 180)), (1, (214, 39, 40))):
    draw.line(list(zip(x, y(prediction[:, d]))), fill=colour, width=2)
  draw.text((left, 4), f'{title}   valence (blue), arousal (red); grey: no face', fill=(0, 0, 0))
  draw.text((left, bottom + 6), '0 s', fill=(0, 0, 0))
  draw.text((right - 60, bottom + 6), f'{span:.1f} s', fill=(0, 0, 0))
  image.save(path)


def overlay(path, video_path, boxes: np.ndarray, prediction: np.ndarray, fps: float) -> None:
  """An mp4 (MPEG-4 part 2) of the video with the main face's box and its valence and arousal on each frame."""
  with av.open(str(path), 'w') as out:
    stream = None
    k = 0
    for frames, _ in decode.frame_batches(video_path, 64):
      for frame in frames:
        if stream is None:
          stream = out.add_stream('mpeg4', rate=round(fps))
          stream.width, stream.height = frame.shape[1] // 2 * 2, frame.shape[0] // 2 * 2
          stream.pix_fmt, stream.bit_rate = 'yuv420p', 4_000_000
        image = Image.fromarray(frame[:stream.height, :stream.width])
        draw = ImageDraw.Draw(image)
        v, a = np.clip(prediction[k], -1, 1)
        if not np.isnan(boxes[k]).any():
          draw.rectangle(boxes[k].tolist(), outline=(0, 255, 0), width=3)
        draw.rectangle([0, 0, 200, 22], fill=(0, 0, 0))
        draw.text((6, 5), f'valence {v:+.2f}  arousal {a:+.2f}', fill=(255, 255, 255))
        out.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format='rgb24')))
        k += 1
    if stream is not None:
      out.mux(stream.encode(None))
