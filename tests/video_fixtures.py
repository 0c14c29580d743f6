"""Test videos made with PyAV from a real photograph (scikit-image's `astronaut`), not by the code under test."""
from __future__ import annotations

import fractions

import av
import numpy as np
from PIL import Image

# The astronaut's face in the 512x512 photograph (x0, y0, x1, y1): her brows to her mouth, as a frontal-face box.
PHOTO_FACE_BOX = np.array([177.0, 66.0, 272.0, 161.0])
PHOTO_EYES = np.array([[201.5, 100.5], [247.0, 104.0]])  # her eye centres (left, right in the image)
HEAD = (100, 0, 360, 300)  # the part of the photograph pasted into the videos (x0, y0, x1, y1)


def astronaut() -> np.ndarray:
  import skimage.data  # pylint: disable=g-import-not-at-top
  return skimage.data.astronaut()


def moving_face_video(path, num_frames: int = 40, size=(320, 240), fps: int = 25, audio_rate: int = 44100,
                      channels: int = 2, faceless=()) -> np.ndarray:
  """Writes an mp4 of the photograph's head moving and scaling over a textured background, with a `channels`
  sine track at `audio_rate`; frames in `faceless` show the background only. Returns the face box `[N, 4]`
  placed in each frame (NaN where faceless)."""
  rng = np.random.default_rng(0)
  width, height = size
  background = (rng.normal(110, 25, (height // 8, width // 8, 3)).clip(0, 255)).astype(np.uint8)
  background = np.asarray(Image.fromarray(background).resize(size, Image.BILINEAR))
  head = Image.fromarray(astronaut()[HEAD[1]:HEAD[3], HEAD[0]:HEAD[2]])
  boxes = np.full((num_frames, 4), np.nan)
  with av.open(str(path), 'w') as out:
    video = out.add_stream('mpeg4', rate=fps)
    video.width, video.height, video.pix_fmt, video.bit_rate = width, height, 'yuv420p', 2_000_000
    audio = out.add_stream('aac', rate=audio_rate, layout='stereo' if channels == 2 else 'mono')
    for k in range(num_frames):
      phase = k / max(num_frames - 1, 1)
      scale = 0.55 + 0.2 * phase
      x, y = int(10 + 60 * phase), int(5 + 15 * np.sin(np.pi * phase))
      frame = Image.fromarray(background.copy())
      if k not in faceless:
        pasted = head.resize((round(head.width * scale), round(head.height * scale)), Image.BILINEAR)
        frame.paste(pasted, (x, y))
        boxes[k] = (PHOTO_FACE_BOX - [HEAD[0], HEAD[1], HEAD[0], HEAD[1]]) * np.array(
            [pasted.width / head.width, pasted.height / head.height] * 2) + [x, y, x, y]
      out.mux(video.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format='rgb24')))
    out.mux(video.encode(None))
    t = np.arange(int(audio_rate * num_frames / fps)) / audio_rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    samples = np.tile(tone[None], (channels, 1))
    step = 1024
    for i in range(0, samples.shape[1], step):
      frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i:i + step]), format='fltp',
                                         layout='stereo' if channels == 2 else 'mono')
      frame.sample_rate, frame.pts, frame.time_base = audio_rate, i, fractions.Fraction(1, audio_rate)
      out.mux(audio.encode(frame))
    out.mux(audio.encode(None))
  return boxes
