"""RJCA clip views: frame sampling rules, window/clip layout, clip audio, per-clip log-mel vs librosa."""
import numpy as np
import pytest

from affjax.data import affwild2
from affjax.data.views import clips
from affjax.models.audio import clip_log_mel


def reference_selection(available):
  """The spec's cases as a direct loop: walk back from the last available frame taking every k-th."""
  n = len(available)
  if n == 32:
    k = 4
  elif 24 <= n <= 31:
    k = 3
  elif 16 <= n <= 23:
    k = 2
  else:
    k = 1
  picked = []
  for pos in range(n - 1, -1, -1):
    if (n - 1 - pos) % k == 0 and len(picked) < 8:
      picked.insert(0, available[pos])
  while len(picked) < 8:
    picked.append(available[-1])
  return picked


@pytest.mark.parametrize('n', [32, 31, 24, 23, 16, 15, 8, 7, 3, 1])
def test_select_frames_follows_the_spec_cases(n):
  rng = np.random.default_rng(n)
  for _ in range(5):
    available = np.sort(rng.choice(np.arange(100, 132), n, replace=False))
    got = clips.select_frames(available)
    assert got.shape == (8,)
    np.testing.assert_array_equal(got, reference_selection(list(available)))
    assert got[-1] == available[-1]  # the clip's label frame is its last available frame


def test_select_frames_examples():
  full = np.arange(32)
  np.testing.assert_array_equal(clips.select_frames(full), [3, 7, 11, 15, 19, 23, 27, 31])
  np.testing.assert_array_equal(clips.select_frames(np.arange(5)), [0, 1, 2, 3, 4, 4, 4, 4])
  with pytest.raises(ValueError, match='1..32 available frames'):
    clips.select_frames(np.arange(0))


@pytest.mark.parametrize('num_frames,num_clips', [(1000, 16), (70, 2), (64, 2)])
def test_every_frame_ends_exactly_one_clip(num_frames, num_clips):
  ends = np.concatenate([clips.clip_ends(w, num_clips) for w in range(clips.num_windows(num_frames, num_clips))])
  real = ends[ends < num_frames]
  np.testing.assert_array_equal(np.sort(real), np.arange(num_frames))
  assert len(ends) - len(real) < num_clips * clips.CLIP_LENGTH  # only the last group has empty clips
  np.testing.assert_array_equal(clips.clip_ends(0, 16), 32 * np.arange(16))  # spec: e_i = end - (15 - i) 32
  np.testing.assert_array_equal(clips.clip_ends(33, 16), 512 + 1 + 32 * np.arange(16))


def test_clip_frames_use_face_availability():
  face_mask = np.ones(100, bool)
  face_mask[40:70] = False  # clip (31, 63] keeps 8 faces (32..39), clip (63, 95] keeps 26
  frames, has_face = clips.clip_frames(np.array([0, 63, 95, 127, 140]), face_mask)
  np.testing.assert_array_equal(frames[0], [0] * 8)  # one frame (0): repeated
  np.testing.assert_array_equal(frames[1], np.arange(32, 40))
  np.testing.assert_array_equal(frames[2], reference_selection(list(range(70, 96))))
  np.testing.assert_array_equal(frames[3], reference_selection(list(range(96, 100))))
  np.testing.assert_array_equal(has_face, [True, True, True, True, False])  # (108, 140] lies past the end
  # The same selection from a slice of the mask starting at frame 60.
  frames_60, has_face_60 = clips.clip_frames(np.array([95, 127]), face_mask[60:], first_frame=60)
  np.testing.assert_array_equal(frames_60, frames[2:4])
  np.testing.assert_array_equal(has_face_60, has_face[2:4])


def test_clip_audio_spans_the_clip_right_aligned():
  fps, length = 25.0, 24000
  samples = np.arange(1, 100001, dtype=np.float32)  # sample k holds k + 1
  out, n = clips.clip_audio(samples, 0, end=100, fps=fps, length=length)
  s0, s1 = affwild2.frame_boundary_sample(69, fps), affwild2.frame_boundary_sample(101, fps)
  assert n == s1 - s0
  np.testing.assert_array_equal(out[length - n:], samples[s0:s1])
  assert not out[:length - n].any()
  first, n_first = clips.clip_audio(samples, 0, end=3, fps=fps, length=length)  # starts before the video
  assert n_first == affwild2.frame_boundary_sample(4, fps)
  np.testing.assert_array_equal(first[length - n_first:], samples[:n_first])
  long, n_long = clips.clip_audio(samples[1000:], 1000, end=50, fps=10.0, length=length)  # 3.2 s > length
  s1 = affwild2.frame_boundary_sample(51, 10.0)
  assert n_long == length
  np.testing.assert_array_equal(long, samples[s1 - length:s1])


def _librosa_log_mel(librosa, x):
  """The reference recipe with librosa: 20 ms periodic Hann in a 512-point FFT, 10 ms hop, 64 HTK mels,
  power dB with an 80 dB floor below the maximum, (dB + 14.8) / 19.895."""
  mel = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=16000, n_fft=512, hop_length=160, win_length=320,
                                       window='hann', center=True, pad_mode='reflect', n_mels=64, htk=True,
                                       norm=None, power=2.0)
  return ((librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0) + 14.8) / 19.895).T


def test_clip_log_mel_matches_librosa():
  """Tolerance: 1e-3 in scaled units (0.02 dB), float32 spectra vs librosa's float64."""
  librosa = pytest.importorskip('librosa')
  frames = 224
  length = clip_log_mel.log_mel_samples(frames, 160)
  rng = np.random.default_rng(0)
  t = np.arange(length) / 16000
  wave = (0.3 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(length))
  short = 9000  # < 1.03 s: silence-padded to 16480 samples (104 frames), then 0 frames
  buffers = np.zeros((2, length), np.float32)
  buffers[0] = wave
  buffers[1, -short:] = wave[-short:]
  out = np.asarray(clip_log_mel.clip_log_mel(buffers, np.array([length, short])))
  assert out.shape == (2, frames, 64)
  np.testing.assert_allclose(out[0], _librosa_log_mel(librosa, buffers[0]), atol=1e-3)
  padded = np.concatenate([np.zeros(16480 - short), wave[-short:]])
  np.testing.assert_allclose(out[1, -104:], _librosa_log_mel(librosa, padded), atol=1e-3)
  np.testing.assert_array_equal(out[1, :-104], 0.0)
  clip = out[1, -104:]  # its silent left part sits at the 80 dB floor below the clip's maximum, not at 0
  assert clip.min() == pytest.approx(clip.max() - 80 / 19.895, abs=1e-5) and clip.min() < -1
