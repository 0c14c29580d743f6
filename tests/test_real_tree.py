"""An Aff-Wild2 tree as users unpack it, written here with PyAV and PIL (not by affjax.data.synthetic): videos
nested in batch folders, no test list, annotation files a row short or long; records that must not go stale,
damaged shards, and names that try to leave the workdir."""
import json
import logging
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from affjax import evaluate
from affjax.data import builder, feature_cache, names, pipeline, prepare, records as records_lib
from affjax.train import loop
from configs import cross_attn
from test_affwild2 import CHALLENGE, ramp, tone, write_annotation, write_crops, write_video

REPO = pathlib.Path(__file__).resolve().parents[1]
# name: (split, video file, frames, fps, annotation rows); rows past the video's frames or short of them
VIDEOS = {
    'p-25': ('train', 'videos/batch1/p-25.mp4', 40, 25, 39),
    'q-30_left': ('train', 'videos/batch2/q-30.avi', 36, 30, 37),
    'q-30_right': ('train', 'videos/batch2/q-30.avi', 36, 30, 36),
    'r-25': ('validation', 'new_vids/r-25.mp4', 32, 25, 33),
}
SET_FOLDER = {'train': 'Train_Set', 'validation': 'Validation_Set'}


def write_release_tree(root: pathlib.Path, splits=('train', 'validation')) -> pathlib.Path:
  for name, (split, video, frames, fps, rows) in VIDEOS.items():
    if split not in splits:
      continue
    if not (root / video).exists():
      write_video(root / video, frames, fps, (tone(220 + 40 * frames, frames / fps, 44100, 2), 44100))
    labels = ramp(rows)
    labels[3:6] = [(-5, -5)] * 3
    write_annotation(root / CHALLENGE / SET_FOLDER[split] / f'{name}.txt', labels)
    write_crops(root / 'cropped_aligned' / name, [k for k in range(1, frames + 1) if k % 7])
  return root


@pytest.fixture(scope='module')
def release_tree(tmp_path_factory) -> pathlib.Path:
  return write_release_tree(tmp_path_factory.mktemp('release'))


@pytest.fixture(scope='module')
def release_records(release_tree, tmp_path_factory) -> pathlib.Path:
  """The records dir (`--config.data.records_dir`) of the release tree at chunk size 16."""
  out = tmp_path_factory.mktemp('release_records')
  builder.build(release_tree, out, chunk_size=16)
  return out


def prediction_rows(path: pathlib.Path) -> int:
  lines = path.read_text().splitlines()
  assert lines[0] == 'valence,arousal'
  return len(lines) - 1


def announcements(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.getMessage().startswith('this run will produce')]


def test_nested_tree_without_test_list_builds_trains_and_writes_a_row_per_annotation_row(release_tree, tmp_path,
                                                                                         caplog):
  config = cross_attn.get_config('smoke,audio')  # the loader reads and decodes the crops all the same
  config.data.update(manual_dir=str(release_tree), records_dir=str(tmp_path / 'records'))
  config.train.update(num_steps=2, eval_every=2, checkpoint_every=2, log_every=1)
  config.eval.splits = ('train', 'validation', 'test')
  with caplog.at_level(logging.INFO):
    results = loop.train_and_evaluate(config, tmp_path / 'run')
  [message] = announcements(caplog)
  assert 'predictions/validation/ (1 videos)' in message and 'predictions/train/ (3 videos)' in message
  assert 'It will not produce: test predictions (the records hold no test video: no test list' in message
  for name, (split, _, _, _, rows) in VIDEOS.items():
    assert prediction_rows(tmp_path / 'run' / 'predictions' / split / f'{name}.txt') == rows, name
  assert not (tmp_path / 'run' / 'predictions' / 'test').exists() and 'test' not in results
  # r-25: 32 frames, rows 4-6 are -5, the 33rd row lies past the video
  assert results['validation']['num_frames'] == 32 - 3


def test_a_tree_without_validation_trains_without_evaluation_and_says_so(tmp_path, caplog):
  tree = write_release_tree(tmp_path / 'tree', splits=('train',))
  config = cross_attn.get_config('smoke,audio')
  config.data.update(manual_dir=str(tree), records_dir=str(tmp_path / 'records'))
  config.train.update(num_steps=2, eval_every=1, checkpoint_every=2, log_every=1)
  with caplog.at_level(logging.INFO):
    results = loop.train_and_evaluate(config, tmp_path / 'run')
  [message] = announcements(caplog)
  assert 'training on 3 videos' in message
  assert 'It will not produce: evaluation during training (no validation videos' in message
  assert 'validation predictions (the records hold no validation video)' in message
  assert results == {} and not (tmp_path / 'run' / 'predictions').exists()
  assert sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir() if p.name.isdigit()) == ['2']
  records = builder.dataset_dir(tmp_path / 'records', 32)
  assert sorted(p.name.split('.')[0] for p in records.glob('*.array_record*')) == ['affwild2-train']
  assert records_lib.open_records(str(records), 'validation').videos == ()


def loudness_cache(source: str, out: pathlib.Path) -> pathlib.Path:
  """A feature cache of the records at `source`: each video's mean absolute audio sample at every frame."""
  return feature_cache.build(source, out, shapes={'level': (1,)}, features=feature_cache.video_features(
      lambda wave, fps, n: {'level': np.full((n, 1), np.abs(wave).mean())}))


def test_a_feature_cache_of_records_without_test_split_builds(release_records, tmp_path):
  source = str(builder.dataset_dir(release_records, 16))
  cache = loudness_cache(source, tmp_path / 'features')
  cached, frames = records_lib.open_records(str(cache), 'train'), records_lib.open_records(source, 'train')
  assert len(cached.source) == len(frames.source)
  assert records_lib.open_records(str(cache), 'test').videos == ()


def test_a_feature_cache_of_an_earlier_state_of_the_tree_is_refused(release_tree, tmp_path):
  tree = shutil.copytree(release_tree, tmp_path / 'tree', symlinks=True)
  builder.build(tree, tmp_path / 'records', chunk_size=16)
  source = str(builder.dataset_dir(tmp_path / 'records', 16))
  cache = loudness_cache(source, tmp_path / 'features')
  config = cross_attn.get_config('smoke,audio')
  config.data.update(manual_dir=str(tree), records_dir=str(tmp_path / 'records'), chunk_size=16,
                     features_dir=str(cache))
  assert prepare.input_dir(config) == str(cache)
  annotation = tree / CHALLENGE / 'Train_Set/p-25.txt'
  annotation.write_text(annotation.read_text().replace('valence,arousal\n-0.9,0.9', 'valence,arousal\n0.5,0.5'))
  with pytest.raises(builder.StaleRecordsError, match=f'{CHALLENGE}/Train_Set/p-25.txt .*changed since'):
    prepare.input_dir(config)  # training from the cache
  builder.build(tree, tmp_path / 'records', chunk_size=16, rebuild=True)
  with pytest.raises(ValueError, match='the tree they were read from differ'):
    records_lib.open_records(source, 'train', side_directory=str(cache))  # joining it to the rebuilt records


def test_an_edited_annotation_stops_the_rerun_and_the_named_command_rebuilds(release_tree, tmp_path):
  tree = shutil.copytree(release_tree, tmp_path / 'tree', symlinks=True)
  builder.build(tree, tmp_path / 'records', chunk_size=16)
  for path in tree.rglob('*'):  # a copy or a touch changes no digest: the records are reused
    os.utime(path, (1, 1))
  builder.build(tree, tmp_path / 'records', chunk_size=16)
  annotation = tree / CHALLENGE / 'Train_Set/q-30_right.txt'
  lines = annotation.read_text().splitlines()
  lines[1] = '0.75,-0.25'  # a corrected label for frame 1
  annotation.write_text('\n'.join(lines) + '\n')
  with pytest.raises(builder.StaleRecordsError) as error:
    builder.build(tree, tmp_path / 'records', chunk_size=16)
  message = str(error.value)
  assert (f'{CHALLENGE}/Train_Set/q-30_right.txt (annotation of train video q-30_right) changed' in message)
  command = shlex.split(message.split('Rebuild them (every split): ', 1)[1])
  assert command[:2] == ['python', 'tools/build_records.py'] and '--rebuild' in command
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable] + command[1:], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
  records = records_lib.open_records(str(builder.dataset_dir(tmp_path / 'records', 16)), 'train')
  video = next(v for v in records.videos if v.name == 'q-30_right')
  np.testing.assert_array_equal(records.source[video.first_record]['labels'][0], [0.75, -0.25])
  builder.build(tree, tmp_path / 'records', chunk_size=16)  # and a rerun reuses them again


@pytest.mark.parametrize('change, named', [
    ('crop_deleted', 'cropped_aligned/r-25 (crops of validation video r-25) changed'),
    ('video_replaced', 'new_vids/r-25.mp4 (video of validation video r-25) changed'),
    ('annotation_deleted', f'{CHALLENGE}/Validation_Set/r-25.txt: validation video r-25 is gone'),
    ('test_list_released', 'the test list: test video t-25 is new'),
])
def test_any_change_of_what_the_build_read_is_named(release_tree, tmp_path, change, named):
  tree = shutil.copytree(release_tree, tmp_path / 'tree', symlinks=True)
  builder.build(tree, tmp_path / 'records', chunk_size=16)
  if change == 'crop_deleted':
    (tree / 'cropped_aligned/r-25/00001.jpg').unlink()
  elif change == 'video_replaced':
    write_video(tree / 'new_vids/r-25.mp4', 31, 25, (tone(300, 31 / 25, 44100, 2), 44100))
  elif change == 'annotation_deleted':
    (tree / CHALLENGE / 'Validation_Set/r-25.txt').unlink()
  else:
    write_video(tree / 'new_vids/t-25.mp4', 10, 25, (tone(300, 0.4, 44100, 1), 44100))
    (tree / 'va_test_set.txt').write_text('t-25\n')
  with pytest.raises(builder.StaleRecordsError, match='--rebuild') as error:
    builder.build(tree, tmp_path / 'records', chunk_size=16)
  assert named in str(error.value)


def damage(shard: pathlib.Path, how: str) -> None:
  data = shard.read_bytes()
  if how == 'truncated':
    shard.write_bytes(data[:len(data) // 2])
  elif how == 'deleted':
    shard.unlink()
  else:  # corrupted in place: same size, so only reading finds it
    flipped = bytearray(data)
    flipped[100:len(data) - 100:991] = bytes(b ^ 0xFF for b in flipped[100:len(data) - 100:991])
    shard.write_bytes(bytes(flipped))


@pytest.mark.parametrize('how, problem', [('truncated', 'holds'), ('deleted', 'is missing'),
                                          ('corrupted', 'cannot read record')])
def test_a_damaged_shard_is_named_with_its_split_and_the_rebuild_command(release_tree, release_records, tmp_path,
                                                                         how, problem):
  records_dir = shutil.copytree(release_records, tmp_path / 'records')
  directory = builder.dataset_dir(records_dir, 16)
  [shard] = directory.glob('affwild2-validation.array_record-*')
  damage(shard, how)
  config = cross_attn.get_config('smoke,audio')
  config.data.update(window=8, eval_hop=8)
  with pytest.raises(records_lib.DamagedRecordsError) as error:
    records = records_lib.open_records(str(directory), 'validation')
    for _ in pipeline.eval_dataset(records, config)[0]:  # the evaluation's own read path
      pass
  message = str(error.value)
  assert str(shard) in message and 'validation' in message and problem in message
  assert f'--manual_dir={release_tree} --records_dir={records_dir} --chunk_size=16' in message
  assert records_lib.open_records(str(directory), 'train').videos  # the other splits stay readable
  builder.build(release_tree, records_dir, chunk_size=16, rebuild=True)
  records = records_lib.open_records(str(directory), 'validation')
  assert len([records.source[i] for i in range(len(records.source))]) == 2  # 32 frames in chunks of 16


def test_a_record_set_naming_a_path_cannot_make_eval_write_outside_the_workdir(release_records, tmp_path):
  records_dir = shutil.copytree(release_records, tmp_path / 'records')
  directory = builder.dataset_dir(records_dir, 16)
  metadata = json.loads((directory / 'metadata.json').read_text())
  metadata['videos']['validation'][0]['name'] = '../../../../x'
  (directory / 'metadata.json').write_text(json.dumps(metadata))
  with pytest.raises(names.UnsafeNameError, match=r"metadata\.json \(validation split\): video name '\.\./\.\./"):
    records_lib.open_records(str(directory), 'validation')

  workdir = tmp_path / 'a' / 'b' / 'c' / 'run'
  video = records_lib.VideoIndex(name='../../../../x', num_frames=4, fps=25.0, first_record=0, num_chunks=1, num_rows=4)
  predictions = evaluate.VideoPredictions.empty(video)
  predictions.add(0, np.zeros((4, 2)), np.zeros((4, 2)), np.ones(4, bool), np.ones(4, bool))
  with pytest.raises(names.UnsafeNameError, match='is not a plain file name'):
    evaluate.write_split(workdir, 'validation', [predictions])
  assert not [p for p in tmp_path.rglob('x*') if p.is_file()]
