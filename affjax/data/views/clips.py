"""Clip views of a video (RJCA, `../shared/specs/rjca.md` §5): windows of L clips of 32 frames, 8 frames
sampled per clip, one audio span per clip (its log-mel spectrogram: `affjax.models.audio.clip_log_mel`).

Every frame is the last frame of exactly one clip. Window (g, j) of a video (group g, offset j in [0, 32))
has clip i (i in [0, L)) ending at frame `e = g * L * 32 + j + 32 * i` (0-based) and spanning frames
(e - 32, e]; frames before 0 or past the video's end do not exist. A clip is predicted at its last frame
e, its target is the label of frame e.

Frame selection among the n frames of the span that have a face crop (not the labels: spec B11):
n = 32 every 4th, 24-31 every 3rd, 16-23 every 2nd, counting back from the last one and keeping the
last 8; 8-15 the last 8; 1-7 all of them, the last one repeated up to 8; n = 0 is an empty clip.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from affjax.data import affwild2, augment, records as records_lib
from affjax.data.views import base, features, predictions
from affjax.models.audio import clip_log_mel

CLIP_LENGTH = 32  # frames spanned by a clip
FRAMES_PER_CLIP = 8  # frames sampled from a clip
NAME = 'clips'


def sampling_step(num_available: int) -> int:
  """Every how many available frames one is kept: 4 (32), 3 (24-31), 2 (16-23), 1 (1-15)."""
  if not 1 <= num_available <= CLIP_LENGTH:
    raise ValueError(f'a clip has 1..{CLIP_LENGTH} available frames, got {num_available}')
  return max(1, num_available // 8)


def select_frames(available: np.ndarray) -> np.ndarray:
  """The 8 frames `[8]` (ascending, the last one repeated if fewer than 8) sampled from the ascending
  frame ids `available` (1..32 of them) of one clip."""
  available = np.asarray(available)
  picked = available[::-1][::sampling_step(len(available))][:FRAMES_PER_CLIP][::-1]
  return np.concatenate([picked, np.repeat(picked[-1:], FRAMES_PER_CLIP - len(picked))])


def num_windows(num_frames: int, num_clips: int) -> int:
  """Windows of a video: 32 per group of L * 32 frames (every frame ends one clip of one window)."""
  return math.ceil(num_frames / (num_clips * CLIP_LENGTH)) * CLIP_LENGTH


def clip_ends(window: int, num_clips: int) -> np.ndarray:
  """The last frame `[L]` (0-based) of each clip of window number `window` of a video."""
  group, offset = divmod(window, CLIP_LENGTH)
  return group * num_clips * CLIP_LENGTH + offset + CLIP_LENGTH * np.arange(num_clips)


def clip_frames(ends: np.ndarray, face_mask: np.ndarray, first_frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The sampled frames of clips ending at `ends` `[L]`, given the face mask of frames
  [first_frame, first_frame + len(face_mask)) (frames outside it have no face).

  Returns frames `[L, 8]` (0-based frame ids; 0 for empty clips) and has_face `[L]` (the clip is not empty).
  """
  frames = np.zeros((len(ends), FRAMES_PER_CLIP), np.int64)
  has_face = np.zeros(len(ends), bool)
  for i, end in enumerate(ends):
    span = np.arange(end - CLIP_LENGTH + 1, end + 1)
    inside = (span >= first_frame) & (span < first_frame + len(face_mask))
    available = span[inside][face_mask[span[inside] - first_frame]]
    if len(available):
      frames[i], has_face[i] = select_frames(available), True
  return frames, has_face


def clip_audio(samples: np.ndarray, samples_start: int, end: int, fps: float, length: int) -> tuple[np.ndarray, int]:
  """The audio of the clip ending at frame `end`, right-aligned in `length` zeros.

  `samples` holds the video's 16 kHz audio from sample `samples_start` on and must cover the clip (as far
  as the video's audio goes). The clip owns samples [b(end - 31), b(end + 1)) (b = frame boundary, from 0
  when the clip starts before the video); a longer span keeps its last `length` samples.
  Returns (`[length]` float32, number of the clip's samples in it).
  """
  s0 = affwild2.frame_boundary_sample(max(end - CLIP_LENGTH + 1, 0), fps)
  s1 = affwild2.frame_boundary_sample(end + 1, fps)
  s0 = max(s0, s1 - length)
  span = samples[s0 - samples_start:s1 - samples_start]
  out = np.zeros(length, np.float32)
  out[length - len(span):] = span
  return out, len(span)


# ----------------------------------------------------------------------------- the clip-view pipeline
def window_table(videos, num_clips: int) -> np.ndarray:
  """[M, 2] int64 rows (video index, window number) of every clip window of every video, in order."""
  rows = [np.stack([np.full(n, i), np.arange(n)], axis=1)
          for i, v in enumerate(videos) for n in [num_windows(v.num_frames, num_clips)]]
  return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def clip_audio_samples(config) -> int:
  """Samples of each clip's audio buffer: its log-mel has `data.audio_frames` frames at a 10 ms hop."""
  return clip_log_mel.log_mel_samples(config.data.audio_frames, clip_log_mel.hop_samples())


def example_batch(config, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a clip-view batch (the RJCA model's input signature); from a feature cache
  (`data.features_dir`) its `<part>_features` instead of faces and audio."""
  num_clips, size = config.data.num_clips, config.data.image_size
  if config.data.features_dir:
    return features.example_batch(config.data.features_dir, batch_size, num_clips)
  return dict(faces=np.zeros((batch_size, num_clips, FRAMES_PER_CLIP, size, size, 3), np.uint8),
              clip_audio=np.zeros((batch_size, num_clips, clip_audio_samples(config)), np.float32),
              clip_audio_samples=np.zeros((batch_size, num_clips), np.int32),
              mask=np.ones((batch_size, num_clips), bool))


@dataclasses.dataclass(frozen=True)
class ClipWindowLoader:
  """Reads one clip window (video index, window number) and returns its model inputs, per clip:
  faces `[L, 8, S, S, 3]` uint8, clip_audio `[L, N]` + clip_audio_samples `[L]`, labels `[L, 2]` and
  label_mask `[L]` (of the clip's last frame), face_mask `[L]` (the clip has a face crop), mask `[L]`
  (the clip's last frame is in the video) and frames `[L]` (that frame). Picklable for grain workers.

  `augment` (training): dict(brightness=b, contrast=c): one factor each, U(1 -+ b), U(1 -+ c), per clip.
  """
  records: records_lib.Records
  num_clips: int
  image_size: int
  audio_samples: int
  augment: dict | None = None

  def __call__(self, row: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    video_index, window = int(row[0]), int(row[1])
    video = self.records.videos[video_index]
    ends = clip_ends(window, self.num_clips)
    exists = ends < video.num_frames
    faces = np.zeros((self.num_clips, FRAMES_PER_CLIP, self.image_size, self.image_size, 3), np.uint8)
    audio_buffers = np.zeros((self.num_clips, self.audio_samples), np.float32)
    audio_lengths = np.zeros(self.num_clips, np.int32)
    labels, label_mask = np.zeros((self.num_clips, 2), np.float32), np.zeros(self.num_clips, bool)
    has_face = np.zeros(self.num_clips, bool)
    if exists.any():  # else every clip of the window lies past the video's end
      first, last = max(int(ends[0]) - CLIP_LENGTH + 1, 0), min(int(ends[-1]), video.num_frames - 1)
      c = self.records.chunk_size
      chunks = [self.records.source[video.first_record + k] for k in range(first // c, last // c + 1)]
      chunk_start = first // c * c
      field = lambda name: np.concatenate([ch[name] for ch in chunks])
      face_mask = field('face_mask') & field('frame_mask')
      frames, has_face = clip_frames(ends, face_mask, first_frame=chunk_start)
      has_face &= exists
      jpegs, decoded = field('faces'), {}
      for i in np.flatnonzero(has_face):
        for k, f in enumerate(frames[i]):
          if f not in decoded:
            decoded[f] = records_lib.decode_face(jpegs[f - chunk_start], self.image_size, video.name, int(f))
          faces[i, k] = decoded[f]
        if self.augment is not None:
          faces[i] = augment.color_jitter(faces[i], rng, saturation=0.0, **self.augment)
      samples, samples_start = field('audio'), affwild2.frame_boundary_sample(chunk_start, video.fps)
      for i in np.flatnonzero(exists):
        audio_buffers[i], audio_lengths[i] = clip_audio(samples, samples_start, int(ends[i]), video.fps,
                                                        self.audio_samples)
      rows = ends[exists] - chunk_start
      labels[exists], label_mask[exists] = field('labels')[rows], field('label_mask')[rows]
    return dict(faces=faces, clip_audio=audio_buffers, clip_audio_samples=audio_lengths, labels=labels,
                label_mask=label_mask, face_mask=has_face, mask=exists, frames=ends.astype(np.int32),
                video_index=np.int32(video_index))


@dataclasses.dataclass(frozen=True)
class ChunkClipLoader:
  """The clips that end at the frames of one chunk (feature caches): row (video index, start frame) -> the
  `ClipWindowLoader` entries of its C = chunk_size clips, per clip (faces `[C, 8, S, S, 3]`, clip_audio
  `[C, N]`, ..., mask `[C]`). `clips` reads one clip per window (num_clips = 1: window number = last frame)."""
  clips: ClipWindowLoader

  def __call__(self, row: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    video_index, start = int(row[0]), int(row[1])
    per_clip = [self.clips(np.array([video_index, end])) for end in range(start, start + self.clips.records.chunk_size)]
    return dict({k: np.stack([c[k][0] for c in per_clip]) for k in per_clip[0] if k != 'video_index'},
                video_index=np.int32(video_index))


@dataclasses.dataclass(frozen=True)
class ClipFeatureLoader:
  """Reads one clip window of a clip-view feature cache: `<part>_features [L, ...]` of its clips (stored at
  their last frames), labels, label_mask, face_mask, mask, frames (as `ClipWindowLoader`); no augmentation."""
  records: records_lib.Records
  num_clips: int

  def __call__(self, row: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    del rng  # cached features are not augmented
    video_index, window = int(row[0]), int(row[1])
    ends = clip_ends(window, self.num_clips)
    _, _, field = records_lib.read_frames(self.records, self.records.videos[video_index], int(ends[0]),
                                       int(ends[-1] - ends[0]) + 1)
    at = ends - ends[0]
    exists = field('frame_mask', False)[at]
    out = {f'{part}_features': field(f'{part}_features', 0.0)[at] for part in self.records.features}
    return dict(out, labels=field('labels', 0.0)[at], label_mask=field('label_mask', False)[at] & exists,
                face_mask=field('face_mask', False)[at] & exists, mask=exists, frames=ends.astype(np.int32),
                video_index=np.int32(video_index))


def loader(records: records_lib.Records, config, *, train: bool) -> ClipWindowLoader | ClipFeatureLoader:
  """The window loader of the clip view: from the frame records, or from a clip-view feature cache."""
  if records.features:
    return ClipFeatureLoader(records=records, num_clips=config.data.num_clips)
  data = config.data
  jitter = dict(brightness=data.augment.brightness, contrast=data.augment.contrast) if train else None
  return ClipWindowLoader(records=records, num_clips=data.num_clips, image_size=data.image_size,
                          audio_samples=clip_audio_samples(config), augment=jitter)


def windows(records: records_lib.Records, config, *, train: bool) -> tuple[np.ndarray, base.Loader]:
  """Every clip window of `data.num_clips` clips (`window_table`) and its loader (`loader`)."""
  features.check_view(records, NAME)
  return window_table(records.videos, config.data.num_clips), loader(records, config, train=train)


def validate(config) -> None:
  """RJCA clip windows (`data.view = 'clips'`)."""
  data = config.data
  base.require(isinstance(data.num_clips, int) and not isinstance(data.num_clips, bool) and data.num_clips > 0,
               'data.num_clips', data.num_clips, 'must be an integer > 0')
  base.require(data.image_size % 16 == 0, 'data.image_size', data.image_size,
               'must be a multiple of 16 (R(2+1)D-18 maps S x S faces to S/16 x S/16 positions; 112 gives 7 x 7)')
  base.require(data.audio_frames >= 104, 'data.audio_frames', data.audio_frames,
               'must be >= 104 (clips are padded to 1.03 s = 104 log-mel frames)')
  if config.compat.audio_guidance_on_position_axis:
    base.require(data.image_size == 112, 'data.image_size', data.image_size,
                 'compat.audio_guidance_on_position_axis needs the 49 positions of 112 px faces')


def chunk_loader(records: records_lib.Records, config) -> ChunkClipLoader:
  """The loader of the clips that end at the frames of one chunk (not augmented)."""
  return ChunkClipLoader(ClipWindowLoader(records=records, num_clips=1, image_size=config.data.image_size,
                                          audio_samples=clip_audio_samples(config)))


VIEW = base.View(name=NAME, windows=windows, example_batch=example_batch,
                 predictions=lambda records, config: predictions.OnFrames.of(records, lambda window: window['frames']),
                 validate=validate, chunk_loader=chunk_loader,
                 backbone_inputs=('faces', 'clip_audio', 'clip_audio_samples'),
                 unit=lambda config: ('clips', config.data.num_clips))
