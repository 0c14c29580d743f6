"""tools/benchmark.py: the affjax side's config and batch, the peak memory, the upstream size checks, the table and
JSON of a tiny real run (no timing assertions; the upstream models need the upstream checkouts)."""
import json
import mmap
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'tools'))
import benchmark  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import benchmark_affjax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import benchmark_upstream  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

KARAS_SIZES = ('train.batch_size=4', 'data.window=8')


def test_load_config_settings_and_precision():
  config = benchmark_affjax.load_config('cross_attn', KARAS_SIZES, {'dtype': 'bfloat16', 'attention_impl': 'cudnn'})
  assert (config.train.batch_size, config.data.window) == (4, 8)
  assert config.train.dtype == 'bfloat16' and config.model.attention_impl == 'cudnn'
  lstm = benchmark_affjax.load_config('configs/lstm.py', (), {'attention_impl': 'cudnn'})  # no attention: unchanged
  assert 'attention_impl' not in lstm.model and lstm.train.dtype == 'float32'
  assert benchmark_affjax.load_config('cross_attn:frozen').model.frozen == ('audio', 'visual')
  lfan = benchmark_affjax.load_config('lfan', ['model.ir50_units=(3,4,14,3)', 'train.dtype=bfloat16'])
  assert tuple(lfan.model.ir50_units) == (3, 4, 14, 3) and lfan.train.dtype == 'bfloat16'
  assert tuple(lfan.model.feature_norm.mfcc) == (0.0, 1.0)  # statistics do not change the cost
  assert benchmark_affjax.load_config('sparse_e2e:gather').model.top_p_warmup_steps == 0  # the steady state is timed
  with pytest.raises(ValueError, match='no field model.nope'):
    benchmark_affjax.load_config('lstm', ['model.nope=1'])
  with pytest.raises(ValueError, match='expected FIELD=VALUE'):
    benchmark_affjax.load_config('lstm', ['model.num_layers'])
  with pytest.raises(ValueError, match='no configs/nope.py'):
    benchmark_affjax.load_config('nope')


def test_random_batch_windows_are_centred_on_their_frames():
  config = benchmark_affjax.load_config('cross_attn', ('train.batch_size=2', 'data.window=8'))
  batch = benchmark_affjax.random_batch(config)
  assert batch['faces'].shape == (2, 8, 112, 112, 3) and batch['faces'].dtype == np.uint8
  offsets = batch['audio_offsets'][0]
  # frame t's window starts W/2 before its centre floor((t + 1/2) sr / fps) in a waveform zero-padded by W/2
  np.testing.assert_array_equal(offsets, np.floor((np.arange(8) + 0.5) * 16000 / 30).astype(np.int32))
  assert offsets[-1] + config.data.audio_window <= batch['audio'].shape[1]  # every window inside the segment
  assert batch['labels'].shape == (2, 8, 2) and batch['label_mask'].all() and batch['face_mask'].all()
  clips = benchmark_affjax.random_batch(benchmark_affjax.load_config('rjca:smoke'))
  assert (clips['clip_audio_samples'] == clips['clip_audio'].shape[-1]).all()  # every clip's audio complete


def _touched_mapping(size: int = 64 * 2**20) -> mmap.mmap:
  block, page = mmap.mmap(-1, size), b'\1' * 4096
  for offset in range(0, size, len(page)):
    block[offset:offset + len(page)] = page
  return block


def test_peak_rss_is_reset_per_step_or_said_to_be_the_lifetime_peak():
  """Where the kernel resets the peak (VmHWM), a step's peak is its own; where it does not, the reset says so."""
  block = _touched_mapping()  # 64 MiB, mapped and unmapped here whatever malloc keeps (affjax.cpu_runtime)
  block.close()
  peak = benchmark._peak_rss_mib()  # pylint: disable=protected-access
  if not benchmark._peak_rss_reset():  # pylint: disable=protected-access
    assert benchmark._peak_rss_mib() >= peak  # the lifetime peak stands, and the step reports peak_per_step False
    return
  before = benchmark._peak_rss_mib()  # pylint: disable=protected-access
  assert before < peak - 50
  block = _touched_mapping()
  assert benchmark._peak_rss_mib() - before > 50  # pylint: disable=protected-access


def test_upstream_check_names_the_field_and_the_fix(tmp_path):
  for repo in ('RecurrentJointAttentionwithLSTMs', 'ABAW2'):
    (tmp_path / repo).mkdir()
  with pytest.raises(ValueError, match=r'config.model.num_iterations=3.*rjca:jca,frozen'):
    benchmark_upstream.check(benchmark_affjax.load_config('rjca'), 'rjca', 'train', str(tmp_path))
  paper_sizes = benchmark_affjax.load_config('rjca:jca,frozen', ['data.image_size=112', 'data.num_clips=16'])
  benchmark_upstream.check(paper_sizes, 'rjca', 'infer', str(tmp_path))
  with pytest.raises(ValueError, match=r'ir50_units=\(1, 1, 1, 1\)'):
    benchmark_upstream.check(benchmark_affjax.load_config('lfan'), 'lfan', 'train', str(tmp_path))
  with pytest.raises(ValueError, match='--mode=input has no upstream side'):
    benchmark_upstream.check(benchmark_affjax.load_config('lstm'), 'lstm', 'input', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no abaw3_rnn_attn/'):
    benchmark_upstream.check(benchmark_affjax.load_config('lstm'), 'lstm', 'train', str(tmp_path))


def test_summarise_medians_ratio_and_rate():
  infos = {'affjax': dict(unit='frames', units=32, params=10, trainable=4), 'upstream': dict(params=12, trainable=12)}
  costs = dict(user_s=0.5, system_s=0.01, minor_faults=0)
  steps = {'affjax': [dict(seconds=s, peak_rss_mib=m, peak_per_step=True, **costs)
                      for s, m in ((0.4, 100), (0.2, 300), (0.3, 200))],
           'upstream': [dict(seconds=s, peak_rss_mib=50.0, peak_per_step=False, **costs) for s in (1.0, 0.6, 0.9, 0.8)]}
  row = benchmark.summarise('lstm', 'train', infos, steps, [1.5, 0.5, 1.0])
  assert row['sides']['affjax']['median_s'] == pytest.approx(np.median([0.4, 0.2, 0.3]))
  assert row['sides']['upstream']['median_s'] == pytest.approx(np.median([1.0, 0.6, 0.9, 0.8]))
  assert row['ratio'] == pytest.approx(0.3 / 0.85) and row['sides']['affjax']['rate'] == pytest.approx(32 / 0.3)
  assert row['sides']['affjax']['peak_rss_mib'] == 300 and row['load'] == [0.5, 1.5] and row['other'] == 'upstream'
  assert row['sides']['upstream']['minor_faults'] == [0] * 4 and row['sides']['affjax']['user_s'] == [0.5] * 3
  document = dict(device='cpu', precision={}, frameworks='jax', commits={}, rounds=3, rows=[row])
  lines = benchmark.table(document).splitlines()
  assert lines[1].startswith('| system | mode | step | upstream s/step | affjax s/step | affjax / upstream')
  cells = [c.strip() for c in lines[3].strip('|').split('|')]
  assert cells[:7] == ['lstm', 'train', '32 frames', '0.850', '0.300', '0.35', '106.7 frames/s']
  assert cells[7] == '50 / 300 (process lifetime)' and cells[8] == '12 (12) / 10 (4)'


def test_a_tiny_run_gives_the_table_and_json(tmp_path, monkeypatch):
  """The real path on a tiny config: a worker process builds the affjax side, runs its steps, the parent reports."""
  monkeypatch.setattr(benchmark, 'SETTLE_SECONDS', 0.0)
  tiny = ['train.batch_size=4', 'data.window=2', 'data.eval_hop=2', 'data.train_hop=2']  # 4 devices, a valid config
  result = benchmark.run(['lstm:smoke,audio,frozen'], 'infer', tiny, rounds=2)
  document = json.loads(json.dumps(result))  # JSON as written by --json
  (row,) = document['rows']
  assert row['system'] == 'lstm:smoke,audio,frozen' and row['mode'] == 'infer' and row['other'] is None
  assert row['unit'] == 'frames' and row['units'] == 8 and row['ratio'] is None
  mine = row['sides']['affjax']
  assert len(mine['seconds']) == 2 and mine['median_s'] > 0 and mine['rate'] == pytest.approx(8 / mine['median_s'])
  assert 0 < mine['trainable'] < mine['params']  # frozen backbones: only the fusion and head train
  assert document['commits']['affjax'] and 'cpu' in document['device'].lower()
  table = benchmark.table(document).splitlines()
  assert table[3].startswith('| lstm:smoke,audio,frozen | infer | 8 frames | - |') and len(table) == 4
