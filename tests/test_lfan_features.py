"""LFAN's MFCC features against librosa (an independent implementation)."""
import jax
import numpy as np
import pytest

from affjax.models.audio import mfcc as af

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


# ----------------------------------------------------------------------------- VGGish
def test_vggish_log_mel_examples_match_librosa():
  from affjax.models.backbones import vggish  # pylint: disable=g-import-not-at-top
  x = _speechlike(vggish.EXAMPLE_SAMPLES, seed=2)
  ours = np.asarray(jax.jit(vggish.log_mel_examples)(x))
  mel = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=16000, n_fft=512, hop_length=160, win_length=400,
                                       window='hann', center=False, n_mels=64, fmin=125.0, fmax=7500.0, htk=True,
                                       norm=None, power=1.0)
  assert ours.shape == (96, 64)
  np.testing.assert_allclose(ours, np.log(mel.T + 0.01), rtol=1e-4, atol=1e-4)


def test_vggish_matches_pytorch_with_converted_weights(tmp_path):
  """torchvggish's `VGGish` layout, saved whole as a bare state dict (its PCA postprocessor `pproc` included),
  converted through the CLI's path. torchvggish ends its `embeddings` with a ReLU; the TF original, which LFAN
  ran, does not (`vggish_slim` fc2 `activation_fn=None`): the reference is the raw fc2 output, as affjax's."""
  torch = pytest.importorskip('torch')
  from affjax.models.backbones import vggish  # pylint: disable=g-import-not-at-top
  import torch_checkpoints  # pylint: disable=g-import-not-at-top
  nn = torch.nn

  class Postprocessor(nn.Module):
    def __init__(self):
      super().__init__()
      self.pca_eigen_vectors = nn.Parameter(torch.randn(128, 128), requires_grad=False)
      self.pca_means = nn.Parameter(torch.randn(128, 1), requires_grad=False)

  class TorchVGGish(nn.Module):
    """torchvggish's names: `features` (conv, ReLU, pools) and `embeddings` Sequentials, `pproc`."""

    def __init__(self):
      super().__init__()
      layers, c_in = [], 1
      for width in vggish.CONV_WIDTHS:
        if width == 'pool':
          layers.append(nn.MaxPool2d(2, 2))
        else:
          layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
          c_in = width
      self.features = nn.Sequential(*layers)
      self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                                      nn.Linear(4096, 128), nn.ReLU())
      self.pproc = Postprocessor()

    def fc2(self, x):  # x [N, 1, 96, 64]
      x = self.features(x).permute(0, 2, 3, 1)  # flatten in (H, W, C) order, as TF
      return self.embeddings[:5](x.reshape(x.shape[0], -1))

  torch.manual_seed(0)
  net = TorchVGGish().eval()
  examples = np.random.default_rng(3).standard_normal((2, 96, 64)).astype(np.float32)
  with torch.no_grad():
    ref = net.fc2(torch.from_numpy(examples)[:, None]).numpy()
  conversion = torch_checkpoints.save_and_convert('vggish', net.state_dict(), tmp_path / 'vggish-10086976.pth')
  assert conversion.heads_left_out == ['pproc.pca_eigen_vectors', 'pproc.pca_means']
  out = np.asarray(jax.jit(vggish.VGGish().apply)(conversion.variables, examples))
  assert out.shape == (2, 128)
  assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


def test_vggish_frame_examples_follow_the_spec_alignment():
  """Frame i's example = librosa's log-mel of 0.96 s starting at sample 160 round(100 i / fps) of the waveform
  edge-padded by 1 s, clamped to the last whole example: checked on a waveform shorter than its frames' span."""
  from affjax.models.backbones import vggish  # pylint: disable=g-import-not-at-top
  fps, num_frames = 29.97, 75  # 2.5 s of frames over 1.2 s of audio: the last frames clamp
  wave = _speechlike(19200, seed=4)
  ours = vggish.frame_examples(wave, fps, num_frames)
  assert ours.shape == (num_frames, 96, 64)
  padded = np.concatenate([wave, np.full(16000, wave[-1])]).astype(np.float64)
  mel_frames = 1 + (len(padded) - 400) // 160  # 25 ms windows at a 10 ms hop that fit
  checked = set()
  for i in (0, 1, 7, 40, num_frames - 1):
    start = min(int(np.round(i * 100 / fps)), mel_frames - 96)
    checked.add(start == mel_frames - 96)
    # librosa centres the 400-sample window in each 512-sample frame: start the frames 56 samples earlier
    seg = np.pad(padded, (56, 56))[160 * start:160 * start + 512 + 95 * 160]
    mel = librosa.feature.melspectrogram(y=seg, sr=16000, n_fft=512, hop_length=160, win_length=400, window='hann',
                                         center=False, n_mels=64, fmin=125.0, fmax=7500.0, htk=True, norm=None,
                                         power=1.0)
    np.testing.assert_allclose(ours[i], np.log(mel.T + 0.01), rtol=1e-4, atol=1e-4)
  assert checked == {False, True}  # interior frames and clamped ones


def test_mfcc_statistics_match_direct_per_frame_computation(tiny_records):
  """The pipeline-based statistics equal those of every frame's centred window cut directly from each video's
  whole waveform (the chunks' audio concatenated), std with N - 1."""
  from affjax.systems.lfan import followers as follower_features  # pylint: disable=g-import-not-at-top
  from affjax.data import records as records_lib  # pylint: disable=g-import-not-at-top
  from affjax.data.views import frames  # pylint: disable=g-import-not-at-top
  from configs import lfan  # pylint: disable=g-import-not-at-top
  config = lfan.get_config('smoke')
  records = records_lib.open_records(tiny_records, 'train')
  mean, std = follower_features.mfcc_statistics(records, config)
  half = af.FRAME_MFCC_SAMPLES // 2
  windows = []
  for video in records.videos:
    wave = np.concatenate([records.source[video.first_record + j]['audio'] for j in range(video.num_chunks)])
    wave = np.pad(wave, (half, half + af.FRAME_MFCC_SAMPLES))
    for centre in frames.frame_centre_sample(np.arange(video.num_frames), video.fps):
      windows.append(wave[centre:centre + af.FRAME_MFCC_SAMPLES])  # [centre - half, centre + half) unpadded
  feats = np.asarray(jax.jit(af.frame_mfcc)(np.stack(windows)), np.float64)
  assert mean == pytest.approx(feats.mean(), rel=1e-4)
  assert std == pytest.approx(feats.std(ddof=1), rel=1e-4)
