"""The sparse_e2e token timeline (spec sparse_e2e §5.1) and loss (§5.3) against direct computations."""
import fractions
import io
import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from affjax.data import affwild2, records as records_lib
from affjax.data.views import tokens
from affjax.models.audio import token_mel
from affjax.train import losses
from configs import sparse_e2e

FPS = (25.0, 30.0, 30000 / 1001)


def direct_timeline(num_frames, fps, rate):
  """Token frames and patch starts by a loop in exact rational arithmetic: t_j = j / r while t_j < N / fps,
  f_j = round(t_j·fps) (halves up, clamped), c_j = round(80·t_j), patch start 200·(c_j − 16) − 200."""
  fps, rate, half = fractions.Fraction(fps), fractions.Fraction(rate), fractions.Fraction(1, 2)
  frames, starts, j = [], [], 0
  while fractions.Fraction(j) / rate < num_frames / fps:
    t = fractions.Fraction(j) / rate
    frames.append(min(math.floor(t * fps + half), num_frames - 1))
    starts.append(200 * (math.floor(80 * t + half) - 16) - 200)
    j += 1
  return np.array(frames), np.array(starts)


@pytest.mark.parametrize('fps', FPS)
@pytest.mark.parametrize('rate', [10.0, 4.0, 7.5])
@pytest.mark.parametrize('num_frames', [1, 31, 300, 1001])
def test_token_frames_and_patches_match_a_direct_loop(fps, rate, num_frames):
  frames, starts = direct_timeline(num_frames, fps, rate)
  n = tokens.num_tokens(num_frames, fps, rate)
  assert n == len(frames)
  j = np.arange(n)
  np.testing.assert_array_equal(tokens.token_frames(j, fps, rate, num_frames), frames)
  np.testing.assert_array_equal(tokens.patch_starts(j, rate), starts)
  # every window's patches fit the shipped segment
  for first in range(0, n, 7):
    window = np.arange(first, first + 16)
    s = tokens.patch_starts(window, rate)
    assert s[-1] - s[0] + token_mel.PATCH_SAMPLES <= tokens.segment_length(16, rate)


def test_token_frames_at_25_fps_round_halves_up():
  # t_j·fps = 2.5 j: odd tokens sit exactly between two frames and take the later one
  np.testing.assert_array_equal(tokens.token_frames(np.arange(6), 25.0, 10.0, 100), [0, 3, 5, 8, 10, 13])


def loaded_videos(tree, split):
  return {e.name: (e, affwild2.load_video(e)) for e in affwild2.list_videos(tree) if e.split == split}


@pytest.mark.parametrize('rate', [10.0, 7.5])
def test_token_window_loader_equals_direct_reads(tiny_tree, tiny_records, rate):
  records = records_lib.open_records(tiny_records, 'validation')
  videos = loaded_videos(tiny_tree, 'validation')
  t = 6
  loader = tokens.TokenWindowLoader(records=records, window=t, rate=rate, image_size=112)
  table = tokens.window_table(records.videos, t, 3, rate)
  for video_index, first in table:
    index = records.videos[video_index]
    entry, video = videos[index.name]
    frames, starts = direct_timeline(video.num_frames, video.fps, rate)
    got = loader(np.array([video_index, first]))
    j = np.arange(first, first + t)
    exists = j < len(frames)
    np.testing.assert_array_equal(got['mask'], exists)
    f = frames[j[exists]]
    np.testing.assert_array_equal(got['frames'][exists], f)
    np.testing.assert_array_equal(got['labels'][exists], video.labels[f])
    np.testing.assert_array_equal(got['label_mask'], np.pad(video.label_mask[f], (0, t - len(f))))
    np.testing.assert_array_equal(got['face_mask'], np.pad(video.face_mask[f], (0, t - len(f))))
    for i in np.flatnonzero(got['face_mask']):
      jpeg = affwild2.read_jpeg(entry, int(f[i]))
      np.testing.assert_array_equal(got['faces'][i], np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB')))
    assert not got['faces'][~got['face_mask']].any()
    pad = 2 * tokens.segment_length(t, rate)
    padded = np.concatenate([np.zeros(pad), video.audio, np.zeros(pad)])
    for i in np.flatnonzero(exists):
      patch = got['audio'][got['audio_offsets'][i]:got['audio_offsets'][i] + token_mel.PATCH_SAMPLES]
      want = padded[pad + starts[first + i]:pad + starts[first + i] + token_mel.PATCH_SAMPLES]
      np.testing.assert_array_equal(patch, want, err_msg=f'{index.name} token {first + i}')
    assert got['audio'].shape == (tokens.segment_length(t, rate),)
  assert len(table)


def test_token_predictions_average_windows_and_interpolate_to_frame_times():
  video = records_lib.VideoIndex(name='v', num_frames=20, fps=25.0, first_record=0, num_chunks=1, num_rows=20)
  acc = tokens.TokenPredictions.empty(video, 10.0)
  assert len(acc.counts) == 8  # t = 0.0 ... 0.7 < 20 / 25 = 0.8 s
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
  acc.add(0, a, np.ones(6, bool))
  acc.add(4, b, np.array([True] * 4 + [False] * 2))  # tokens 4..7, then padding
  mean = np.concatenate([a[:4], (a[4:] + b[:2]) / 2, b[2:4]])
  got = acc.frame_prediction()
  for f in range(20):  # direct linear interpolation between the tokens around t = f / 25
    t = f / 25.0
    j0 = min(int(math.floor(t * 10.0 + 1e-9)), 7)
    j1 = min(j0 + 1, 7)
    w = 0.0 if j1 == j0 else t * 10.0 - j0
    np.testing.assert_allclose(got[f], (1 - w) * mean[j0] + w * mean[j1], rtol=1e-12, atol=1e-12)
  with pytest.raises(RuntimeError, match='no prediction'):
    tokens.TokenPredictions.empty(video, 10.0).frame_prediction()


def numpy_window_ccc_loss(pred, target, mask):
  """Spec §5.3 in float64: per window over its valid tokens, sum over V and A of 1 − CCC (population moments,
  eps 1e-8), averaged over the windows with >= 2 valid tokens."""
  per_window = []
  for b in range(len(pred)):
    m = mask[b]
    if m.sum() < 2:
      continue
    total = 0.0
    for d in range(2):
      x, y = pred[b, m, d].astype(np.float64), target[b, m, d].astype(np.float64)
      cov = ((x - x.mean()) * (y - y.mean())).mean()
      total += 1 - 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2 + 1e-8)
    per_window.append(total)
  return np.mean(per_window)


def test_sparse_loss_is_the_spec_per_window_token_ccc():
  config = sparse_e2e.get_config()
  rng = np.random.default_rng(1)
  pred = np.tanh(rng.normal(size=(4, 10, 2))).astype(np.float32)
  target = rng.uniform(-1, 1, (4, 10, 2)).astype(np.float32)
  mask = rng.random((4, 10)) < 0.7
  mask[2] = False
  mask[2, 3] = True  # one valid token: not counted
  mask[3, 8:] = False  # padding
  loss, _ = losses.model_loss({'va': jnp.asarray(pred)}, jnp.asarray(target), jnp.asarray(mask),
                              ml_collections.ConfigDict(config.loss.to_dict()))
  np.testing.assert_allclose(float(loss), numpy_window_ccc_loss(pred, target, mask), rtol=1e-5)
