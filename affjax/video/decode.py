"""Any video file FFmpeg reads -> batches of RGB frames with their timestamps, and its audio as 16 kHz mono.

Frames are taken as decoded (variable frame rate included): frame k's time is its presentation timestamp,
relative to the first frame's.
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import av
import numpy as np


class VideoInputError(ValueError):
  """A video that cannot be predicted; the message names the file and says why."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  path: pathlib.Path
  width: int
  height: int
  fps: float  # the stream's average rate (frame times come from the timestamps)
  num_frames: int  # as the container states it; 0 if it does not
  has_audio: bool


def probe(path) -> VideoInfo:
  """Opens `path` and checks it holds a video stream with at least one decodable frame."""
  path = pathlib.Path(path)
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise VideoInputError(f'{path}: no video stream (an audio-only or data file?)')
      stream = container.streams.video[0]
      first = next(container.decode(stream), None)
      if first is None:
        raise VideoInputError(f'{path}: the video stream holds no decodable frame (zero-length video)')
      rate = stream.average_rate or stream.guessed_rate or stream.base_rate or 25
      return VideoInfo(path=path, width=first.width, height=first.height, fps=float(rate), num_frames=stream.frames,
                       has_audio=bool(container.streams.audio))
  except av.FFmpegError as e:
    raise VideoInputError(f'{path}: not a readable video ({e.strerror or e})') from e


def frame_batches(path, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (`[B, H, W, 3]` uint8 RGB frames, `[B]` float64 times in seconds) in decode order."""
  path = pathlib.Path(path)
  frames, times, t0, count = [], [], None, 0
  try:
    with av.open(str(path)) as container:
      stream = container.streams.video[0]
      stream.thread_type = 'AUTO'
      for frame in container.decode(stream):
        t = frame.time if frame.time is not None else count / float(stream.average_rate or 25)
        count += 1
        t0 = t if t0 is None else t0
        frames.append(frame.to_ndarray(format='rgb24'))
        times.append(t - t0)
        if len(frames) == batch_size:
          yield np.stack(frames), np.array(times)
          frames, times = [], []
  except av.FFmpegError as e:
    raise VideoInputError(f'{path}: decoding failed after {count} frames ({e})') from e
  if frames:
    yield np.stack(frames), np.array(times)


def read_audio(path, sample_rate: int) -> tuple[np.ndarray, float]:
  """(The first audio stream as float32 mono at `sample_rate` (any source rate and channel layout, resampled by
  av.AudioResampler), the time in seconds of its first sample relative to the first video frame).

  Raises VideoInputError when the file has no audio stream."""
  path = pathlib.Path(path)
  chunks = []
  try:
    with av.open(str(path)) as container:
      if not container.streams.audio:
        raise VideoInputError(f'{path}: no audio stream, and this model needs audio; use a visual-only config '
                              '(e.g. the :visual variant) or a video with sound')
      video_start = _start_time(container.streams.video[0]) if container.streams.video else 0.0
      stream = container.streams.audio[0]
      audio_start = _start_time(stream)
      resampler = av.AudioResampler(format='flt', layout='mono', rate=sample_rate)
      for frame in container.decode(stream):
        chunks.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
      chunks.extend(f.to_ndarray()[0] for f in resampler.resample(None))
  except av.FFmpegError as e:
    raise VideoInputError(f'{path}: cannot decode the audio ({e.strerror or e})') from e
  audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
  return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False), audio_start - video_start


def _start_time(stream) -> float:
  return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
