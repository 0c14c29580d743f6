"""affjax.models.audio.spectral against librosa (an independent implementation) and float64 formulas."""
import numpy as np
import pytest

from affjax.models.audio import spectral

librosa = pytest.importorskip('librosa')


def _signal(n=4000, sr=16000, seed=0):
  t = np.arange(n) / sr
  rng = np.random.default_rng(seed)
  return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize('scale,slaney_norm', [('htk', False), ('slaney', True), ('slaney', False)])
def test_mel_filterbank_matches_librosa(scale, slaney_norm):
  fb = spectral.mel_filterbank(512, 16000, 40, 125.0, 7500.0, scale, slaney_norm)
  ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=125.0, fmax=7500.0, htk=scale == 'htk',
                            norm='slaney' if slaney_norm else None).T
  np.testing.assert_allclose(fb, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('center', [True, False])
def test_mel_spectrogram_matches_librosa(center):
  """win 400 in an FFT of 512 (window centred in the frame), hop 160, HTK mels, power 2."""
  x = _signal()
  ours = np.asarray(spectral.mel_spectrogram(x, 16000, n_fft=512, hop_length=160, n_mels=64, win_length=400,
                                          center=center))
  ref = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=16000, n_fft=512, hop_length=160,
                                       win_length=400, n_mels=64, center=center, pad_mode='reflect', htk=True,
                                       norm=None, power=2.0).T
  assert ours.shape == ref.shape == ((1 + 4000 // 160) if center else (1 + (4000 - 512) // 160), 64)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * ref.max())


def test_to_db_matches_librosa_with_top_db():
  spec = np.array(spectral.mel_spectrogram(_signal(), 16000, n_fft=400, hop_length=200, n_mels=32))
  spec[:, :4] = 0.0  # silent bins are clamped to 80 dB below the maximum
  ref = librosa.power_to_db(spec.astype(np.float64), ref=1.0, amin=1e-10, top_db=80.0)
  np.testing.assert_allclose(np.asarray(spectral.to_db(spec)), ref, rtol=1e-5, atol=1e-4)
  batch = np.stack([spec, 10 * spec])  # the clamp is per spectrogram
  np.testing.assert_allclose(np.asarray(spectral.to_db(batch))[1], ref + 10.0, rtol=1e-5, atol=1e-4)


def test_dct_matches_librosa_mfcc():
  log_mel = np.random.default_rng(1).standard_normal((50, 26)).astype(np.float32)
  ref = librosa.feature.mfcc(S=log_mel.T.astype(np.float64), n_mfcc=13, dct_type=2, norm='ortho').T
  np.testing.assert_allclose(np.asarray(spectral.dct_ii(log_mel, 13)), ref, rtol=1e-5, atol=1e-5)


def test_deltas_match_htk_formula():
  x = np.random.default_rng(2).standard_normal((3, 20, 5)).astype(np.float32)
  width = 2
  padded = np.pad(x.astype(np.float64), [(0, 0), (width, width), (0, 0)], mode='edge')
  ref = np.zeros_like(padded[:, width:-width])
  for t in range(x.shape[1]):
    for n in range(1, width + 1):
      ref[:, t] += n * (padded[:, t + width + n] - padded[:, t + width - n])
  ref /= 2 * (1 + 4)
  np.testing.assert_allclose(np.asarray(spectral.deltas(x, width, axis=1)), ref, rtol=1e-5, atol=1e-6)
