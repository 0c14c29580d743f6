"""LFAN's MFCC features against librosa (an independent implementation)."""
import jax
import numpy as np
import pytest

from affjax.data import audio_features as af

librosa = pytest.importorskip('librosa')


def _speechlike(n, seed=0):
  t = np.arange(n) / 16000
  rng = np.random.default_rng(seed)
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
  return (envelope * (0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t))
          + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _librosa_mfcc39(x):
  """c0..c12 (HTK mels, unnormalised filters, power dB without clamp, liftering 22), deltas and delta-deltas
  (librosa's order-1 Savitzky-Golay of width 5 = the HTK regression; edges repeated)."""
  mel = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=16000, n_fft=512, hop_length=160, win_length=400,
                                       window='hann', center=False, n_mels=26, htk=True, norm=None, power=2.0)
  c = librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=None), n_mfcc=13, dct_type=2, norm='ortho', lifter=22)
  d = librosa.feature.delta(c, width=5, order=1, mode='nearest')
  dd = librosa.feature.delta(d, width=5, order=1, mode='nearest')
  return np.concatenate([c, d, dd]).T


def test_mfcc39_matches_librosa():
  """Tolerance: 1e-3 of the largest |coefficient| (float32 FFT and dB vs librosa's float64)."""
  x = _speechlike(8000)
  ours = np.asarray(jax.jit(af.mfcc_with_deltas)(x))
  ref = _librosa_mfcc39(x)
  assert ours.shape == ref.shape == (1 + (8000 - 512) // 160, 39)
  for block in range(3):  # each of c, delta, delta-delta on its own scale
    cols = slice(13 * block, 13 * block + 13)
    np.testing.assert_allclose(ours[:, cols], ref[:, cols], atol=1e-3 * np.abs(ref[:, cols]).max())


def test_frame_mfcc_is_the_centred_row_of_the_whole_signal():
  """A frame's features from its own window equal the whole signal's row at the window centre (interior rows)."""
  x = _speechlike(16000, seed=1)
  full = np.asarray(jax.jit(af.mfcc_with_deltas)(x))
  rows = np.array([10, 37, 60])
  starts = (rows - af.CONTEXT_ROWS) * af.HOP_LENGTH
  windows = np.stack([x[s:s + af.FRAME_MFCC_SAMPLES] for s in starts])
  ours = np.asarray(jax.jit(af.frame_mfcc)(windows))
  np.testing.assert_allclose(ours, full[rows], rtol=1e-4, atol=1e-3)
  with pytest.raises(ValueError, match='config.data.audio_window'):
    af.frame_mfcc(windows[:, :-1])
