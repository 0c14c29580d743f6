"""tools/vs_upstream.py: the affjax side's config and batch (the upstream side needs the upstream checkouts)."""
import mmap
import sys

import numpy as np

sys.path.insert(0, 'tools')
import vs_upstream  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_load_config_sizes_and_precision():
  case = vs_upstream.CASES['cross_attn']
  config = vs_upstream.load_config(case, {'dtype': 'bfloat16', 'attention_impl': 'cudnn'})
  assert (config.train.batch_size, config.data.window) == (case.batch, case.frames)
  assert config.train.dtype == 'bfloat16' and config.model.attention_impl == 'cudnn'
  lstm = vs_upstream.load_config(vs_upstream.CASES['lstm'], {'attention_impl': 'cudnn'})  # no attention: unchanged
  assert 'attention_impl' not in lstm.model and lstm.train.dtype == 'float32'
  assert vs_upstream.load_config(vs_upstream.CASES['cross_attn_frozen']).model.frozen == ('audio', 'visual')


def test_affjax_batch_windows_are_centred_on_their_frames():
  case = vs_upstream.CASES['cross_attn']
  config = vs_upstream.load_config(case)
  batch = vs_upstream._affjax_batch(config, 2, case.frames)  # pylint: disable=protected-access
  assert batch['faces'].shape == (2, case.frames, 112, 112, 3) and batch['faces'].dtype == np.uint8
  offsets = batch['audio_offsets'][0]
  # frame t's window starts W/2 before its centre floor((t + 1/2) sr / fps) in a waveform zero-padded by W/2
  np.testing.assert_array_equal(offsets, np.floor((np.arange(case.frames) + 0.5) * 16000 / 30).astype(np.int32))
  assert offsets[-1] + vs_upstream.AUDIO_WINDOW <= batch['audio'].shape[1]  # every window inside the segment
  assert batch['labels'].shape == (2, case.frames, 2) and batch['label_mask'].all() and batch['face_mask'].all()


def _touched_mapping(size: int = 64 * 2**20) -> mmap.mmap:
  block, page = mmap.mmap(-1, size), b'\1' * 4096
  for offset in range(0, size, len(page)):
    block[offset:offset + len(page)] = page
  return block


def test_peak_rss_is_reset_per_step_or_said_to_be_the_lifetime_peak():
  """Where the kernel resets the peak (VmHWM), a step's peak is its own; where it does not, the reset says so."""
  block = _touched_mapping()  # 64 MiB, mapped and unmapped here whatever malloc keeps (affjax.cpu_runtime)
  block.close()
  peak = vs_upstream._peak_rss_mib()  # pylint: disable=protected-access
  if not vs_upstream._peak_rss_reset():  # pylint: disable=protected-access
    assert vs_upstream._peak_rss_mib() >= peak  # the lifetime peak stands, and the step reports peak_per_step False
    return
  before = vs_upstream._peak_rss_mib()  # pylint: disable=protected-access
  assert before < peak - 50
  block = _touched_mapping()
  assert vs_upstream._peak_rss_mib() - before > 50  # pylint: disable=protected-access
