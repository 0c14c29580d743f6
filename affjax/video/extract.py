"""A video file -> `views.DecodedVideo`: decoded in batches, the main face of every frame found, tracked
and cropped by the training crop convention, the audio resampled; with each stage's time."""
from __future__ import annotations

import collections
import pathlib
import time

import cv2
import numpy as np
import tqdm

from affjax.data import affwild2
from affjax.video import decode, faces as faces_lib
from affjax.video.views import DecodedVideo


def extract(path, *, needs_audio: bool, batch_size: int = 64, timings: collections.Counter | None = None,
            progress: bool = False, detect_height: int = 360) -> tuple[DecodedVideo, np.ndarray]:
  """(The decoded video, `[N, 4]` main-face boxes x0, y0, x1, y1 in frame pixels, NaN where no face).

  `timings` (seconds) gains 'decode', 'detect', 'align' and 'audio'; `progress`: a progress bar of the frames;
  `detect_height`: `faces.HaarDetector`'s."""
  path = pathlib.Path(path)
  timings = collections.Counter() if timings is None else timings
  info = decode.probe(path)
  bar = tqdm.tqdm(total=info.num_frames or None, desc=path.name, unit='frame', disable=not progress, leave=False)
  detector, tracker = faces_lib.HaarDetector(detect_height), faces_lib.MainFaceTracker()
  crops, boxes, times = [], [], []
  clock = time.perf_counter()
  for frames, frame_times in decode.frame_batches(path, batch_size):
    timings['decode'] += time.perf_counter() - clock
    clock = time.perf_counter()
    found = faces_lib.find_faces(frames, detector, tracker)
    timings['detect'] += time.perf_counter() - clock
    clock = time.perf_counter()
    for frame, face in zip(frames, found):
      crops.append(b'' if face is None else jpeg(faces_lib.aligned_crop(frame, face)))
      boxes.append(np.full(4, np.nan) if face is None else face.box)
    times.append(frame_times)
    bar.update(len(frames))
    timings['align'] += time.perf_counter() - clock
    clock = time.perf_counter()
  timings['decode'] += time.perf_counter() - clock
  bar.close()
  if not times:
    raise decode.VideoInputError(f'{path}: the video stream holds no decodable frame (zero-length video)')
  times = np.concatenate(times)
  face_mask = np.array([bool(c) for c in crops])
  clock = time.perf_counter()
  audio = np.zeros(0, np.float32)
  if needs_audio:
    audio = audio_from_time_zero(*decode.read_audio(path, affwild2.SAMPLE_RATE))
  timings['audio'] += time.perf_counter() - clock
  return DecodedVideo(name=path.stem, faces=crops, face_mask=face_mask, times=times, audio=audio), np.stack(boxes)


def jpeg(crop: np.ndarray, quality: int = 95) -> bytes:
  """A crop as JPEG bytes, as the released `cropped_aligned` crops are stored and the views decode them."""
  ok, data = cv2.imencode('.jpg', cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise RuntimeError('OpenCV could not encode a face crop as JPEG')
  return data.tobytes()


def audio_from_time_zero(audio: np.ndarray, start_s: float) -> np.ndarray:
  """Shifts `audio` whose first sample lies at `start_s` seconds so that sample 0 is at time 0 (the first
  frame): leading samples dropped, or zeros prepended."""
  shift = int(round(start_s * affwild2.SAMPLE_RATE))
  return audio[-shift:] if shift < 0 else np.concatenate([np.zeros(shift, np.float32), audio])
