"""A video file -> `frame_view.DecodedVideo`: decoded in batches, the main face of every frame found, tracked
and cropped by the training crop convention, the audio resampled; with each stage's time."""
from __future__ import annotations

import collections
import pathlib
import time

import numpy as np
from PIL import Image

from affjax.data import affwild2
from affjax.video import decode, faces as faces_lib
from affjax.video.frame_view import DecodedVideo


def extract(path, image_size: int, *, needs_audio: bool, batch_size: int = 64,
            timings: collections.Counter | None = None) -> tuple[DecodedVideo, np.ndarray]:
  """(The decoded video, `[N, 4]` main-face boxes x0, y0, x1, y1 in frame pixels, NaN where no face).

  `timings` (seconds) gains 'decode', 'detect', 'align' and 'audio'."""
  path = pathlib.Path(path)
  timings = collections.Counter() if timings is None else timings
  decode.probe(path)
  detector, tracker = faces_lib.HaarDetector(), faces_lib.MainFaceTracker()
  crops, boxes, times = [], [], []
  clock = time.perf_counter()
  for frames, frame_times in decode.frame_batches(path, batch_size):
    timings['decode'] += time.perf_counter() - clock
    clock = time.perf_counter()
    found = faces_lib.find_faces(frames, detector, tracker)
    timings['detect'] += time.perf_counter() - clock
    clock = time.perf_counter()
    for frame, face in zip(frames, found):
      crops.append(None if face is None else face_crop(frame, face, image_size))
      boxes.append(np.full(4, np.nan) if face is None else face.box)
    times.append(frame_times)
    timings['align'] += time.perf_counter() - clock
    clock = time.perf_counter()
  timings['decode'] += time.perf_counter() - clock
  if not times:
    raise decode.VideoInputError(f'{path}: the video stream holds no decodable frame (zero-length video)')
  times = np.concatenate(times)
  face_mask = np.array([c is not None for c in crops])
  blank = np.zeros((image_size, image_size, 3), np.uint8)
  stacked = np.stack([blank if c is None else c for c in crops])
  clock = time.perf_counter()
  audio = np.zeros(0, np.float32)
  if needs_audio:
    audio = audio_from_time_zero(*decode.read_audio(path, affwild2.SAMPLE_RATE))
  timings['audio'] += time.perf_counter() - clock
  return DecodedVideo(name=path.stem, faces=stacked, face_mask=face_mask, times=times, audio=audio), np.stack(boxes)


def face_crop(frame: np.ndarray, face: faces_lib.Face, image_size: int) -> np.ndarray:
  """The 112x112 aligned crop, brought to the model's `image_size` as the training pipeline brings the released
  crops (`pipeline.decode_face`: PIL bilinear resize)."""
  crop = faces_lib.aligned_crop(frame, face)
  if image_size != faces_lib.CROP_SIZE:
    crop = np.asarray(Image.fromarray(crop).resize((image_size, image_size), Image.BILINEAR))
  return crop


def audio_from_time_zero(audio: np.ndarray, start_s: float) -> np.ndarray:
  """Shifts `audio` whose first sample lies at `start_s` seconds so that sample 0 is at time 0 (the first
  frame): leading samples dropped, or zeros prepended."""
  shift = int(round(start_s * affwild2.SAMPLE_RATE))
  return audio[-shift:] if shift < 0 else np.concatenate([np.zeros(shift, np.float32), audio])
