"""Records round trip and window assembly against direct slices of what the reader loads."""
import dataclasses
import io
import os

import numpy as np
import pytest
from PIL import Image

from affjax.data import affwild2, builder, pipeline, records as records_lib
from affjax.data.views import base, compact, frames as frame_view
from configs import base as config_base

W = 10560


def loaded_videos(tree, split):
  return {e.name: (e, affwild2.load_video(e)) for e in affwild2.list_videos(tree) if e.split == split}


def test_records_round_trip(tiny_tree, tiny_records):
  for split in ('train', 'validation', 'test'):
    records = records_lib.open_records(tiny_records, split)
    videos = loaded_videos(tiny_tree, split)
    assert [v.name for v in records.videos] == sorted(videos)
    for index in records.videos:
      entry, video = videos[index.name]
      assert (index.num_frames, index.fps) == (video.num_frames, video.fps)
      chunks = [records.source[index.first_record + j] for j in range(index.num_chunks)]
      n = video.num_frames
      cat = lambda name: np.concatenate([c[name] for c in chunks])
      assert cat('frame_mask')[:n].all() and not cat('frame_mask')[n:].any()
      np.testing.assert_array_equal(cat('labels')[:n], video.labels)
      np.testing.assert_array_equal(cat('label_mask')[:n], video.label_mask)
      np.testing.assert_array_equal(cat('face_mask')[:n], video.face_mask)
      np.testing.assert_array_equal(cat('audio'), video.audio)
      for k in np.flatnonzero(video.face_mask)[::7]:
        assert cat('faces')[k] == (entry.crop_dir / f'{k + 1:05d}.jpg').read_bytes()  # as released
      assert all(c['video'] == index.name.encode() for c in chunks)
      assert [c['start'] for c in chunks] == list(range(0, index.num_chunks * 16, 16))


def test_rebuild_is_a_noop(tiny_tree, tiny_records):
  shards = [os.path.join(tiny_records, f) for f in os.listdir(tiny_records) if 'array_record' in f]
  before = {f: os.stat(f).st_mtime_ns for f in shards}
  builder.build(tiny_tree, os.path.dirname(os.path.dirname(os.path.dirname(tiny_records))), chunk_size=16)
  assert {f: os.stat(f).st_mtime_ns for f in shards} == before


def direct_window(entry, video, start, t, size=112, fps=None):
  """The window computed straight from the reader's arrays: per-frame fields and per-frame audio windows
  centred at frame times of `fps` (default the video's)."""
  frames = np.arange(start, start + t)
  inside = frames < video.num_frames
  k = frames[inside]
  faces = np.zeros((t, size, size, 3), np.uint8)
  for i in np.flatnonzero(inside):
    if video.face_mask[frames[i]]:
      faces[i] = np.asarray(Image.open(io.BytesIO(affwild2.read_jpeg(entry, int(frames[i])))).convert('RGB'))
  padded_audio = np.concatenate([np.zeros(W), video.audio, np.zeros(2 * W + 16000)])
  centres = np.floor((frames + 0.5) * 16000 / (fps or video.fps)).astype(int)
  audio = np.stack([padded_audio[c - W // 2 + W:c + W // 2 + W] for c in centres])
  labels = np.zeros((t, 2), np.float32)
  labels[inside] = video.labels[k]
  label_mask = np.zeros(t, bool)
  label_mask[inside] = video.label_mask[k]
  face_mask = np.zeros(t, bool)
  face_mask[inside] = video.face_mask[k]
  return dict(faces=faces, audio=audio, labels=labels, label_mask=label_mask, face_mask=face_mask, mask=inside)


@pytest.mark.parametrize('t,integer_fps', [(8, False), (24, False), (8, True)])
def test_window_assembly_equals_direct_slice(tiny_tree, tiny_records, t, integer_fps):
  """Also with compat.integer_fps (rnn_attn bug 18): audio centred at frame times of the rounded rate."""
  records = records_lib.open_records(tiny_records, 'validation')
  videos = loaded_videos(tiny_tree, 'validation')
  loader = frame_view.WindowLoader(records=records, window=t, image_size=112, audio_window=W, min_fps=24.0,
                                 integer_fps=integer_fps)
  assert any(v.fps != round(v.fps) for v in records.videos)  # a 29.97 fps video, where the two differ
  for video_index, index in enumerate(records.videos):
    entry, video = videos[index.name]
    for start in base.window_starts(index.num_frames, t, t // 2):  # first, middle and padded tail windows
      got = loader(np.array([video_index, start]))
      want = direct_window(entry, video, start, t, fps=round(video.fps) if integer_fps else None)
      for key in ('faces', 'labels', 'label_mask', 'face_mask', 'mask'):
        np.testing.assert_array_equal(got[key], want[key], err_msg=f'{key} {index.name}@{start}')
      sliced = np.stack([got['audio'][o:o + W] for o in got['audio_offsets']])
      np.testing.assert_array_equal(sliced, want['audio'], err_msg=f'audio {index.name}@{start}')
      assert got['audio'].shape == (frame_view.audio_segment_length(t, W, 24.0),)


def test_fps_below_min_fps_is_a_config_error(tiny_records):
  records = records_lib.open_records(tiny_records, 'validation')
  loader = frame_view.WindowLoader(records=records, window=8, image_size=112, audio_window=W, min_fps=26.0)
  slow = [i for i, v in enumerate(records.videos) if v.fps < 26]
  with pytest.raises(ValueError, match='config.data.min_fps'):
    loader(np.array([slow[0], 0]))


def small_config(**data):
  config = config_base.get_base_config()  # the schema's defaults (no crop, no compat quirk) for what is not set here
  config.data.update(window=8, train_hop=8, eval_hop=4, image_size=112, audio_window=W, min_fps=24.0, num_workers=0,
                     worker_buffer_size=2)
  config.data.augment.update(brightness=0.2, contrast=0.2, saturation=0.2, flip=True)
  config.train.batch_size = config.eval.batch_size = 4
  config.data.update(data)
  return config


def test_train_iterator_resumes_exactly(tiny_records):
  records = records_lib.open_records(tiny_records, 'train')
  config = small_config()
  it = iter(pipeline.train_dataset(records, config))
  for _ in range(3):
    next(it)
  state = it.get_state()
  assert len(frame_view.window_table(records.videos, 8, 8)) < 7 * 4  # so the batches below cross an epoch
  expected = [next(it) for _ in range(4)]
  resumed = iter(pipeline.train_dataset(records, config))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_eval_dataset_walks_every_window_in_order(tiny_records):
  records = records_lib.open_records(tiny_records, 'validation')
  config = small_config()
  dataset, num_windows = pipeline.eval_dataset(records, config)
  batches = list(dataset)
  table = frame_view.window_table(records.videos, 8, 4)
  assert num_windows == len(table)
  rows = np.concatenate([np.stack([b['video_index'], b['start']], 1) for b in batches])
  valid = np.concatenate([b['valid_window'] for b in batches])
  assert len(rows) % 4 == 0 and valid.sum() == len(table)
  np.testing.assert_array_equal(rows[valid], table)


def test_compact_frames_keep_the_annotated_frames_with_a_face(tiny_tree, tiny_records):
  records = records_lib.open_records(tiny_records, 'train')
  videos = loaded_videos(tiny_tree, 'train')
  kept = compact.kept_frames(records)
  for index, frames in zip(records.videos, kept):
    _, video = videos[index.name]
    np.testing.assert_array_equal(frames, np.flatnonzero(video.label_mask & video.face_mask))
  assert sum(len(k) for k in kept) < sum(v.num_frames for v in records.videos)  # the tree has gaps to jump


def test_compact_window_equals_direct_slices_of_the_kept_frames(tiny_tree, tiny_records):
  """compat.compact_frames (rnn_attn bug 15): a window is the next T kept frames, each with its own centred
  audio window; the tail window is padded and masked."""
  records = records_lib.open_records(tiny_records, 'train')
  videos = loaded_videos(tiny_tree, 'train')
  config = small_config(window=8, train_hop=8)
  config.compat.compact_frames = True
  frame_loader = frame_view.WindowLoader(records=records, window=1, image_size=112, audio_window=W, min_fps=24.0)
  table, loader = compact.windows(records, config, frame_loader)
  kept = compact.kept_frames(records)
  assert len(table) == sum(-(-len(k) // 8) for k in kept)
  for video_index, position in table:
    index = records.videos[video_index]
    entry, video = videos[index.name]
    got = loader(np.array([video_index, position]), np.random.default_rng(0))
    frames = kept[video_index][position:position + 8]
    want = [direct_window(entry, video, int(f), 1) for f in frames]
    n = len(frames)
    assert got['mask'][:n].all() and not got['mask'][n:].any()
    assert got['label_mask'][:n].all() and got['face_mask'][:n].all()
    np.testing.assert_array_equal(got['labels'][:n], np.concatenate([w['labels'] for w in want]))
    sliced = np.stack([got['audio'][o:o + W] for o in got['audio_offsets'][:n]])
    np.testing.assert_array_equal(sliced, np.concatenate([w['audio'] for w in want]))
    assert got['faces'].shape == (8, 112, 112, 3) and not got['faces'][n:].any()
    exact = dataclasses.replace(loader, augment=None)(np.array([video_index, position]))
    np.testing.assert_array_equal(exact['faces'][:n], np.concatenate([w['faces'] for w in want]))


def test_compact_training_batches_hold_no_gap(tiny_records):
  records = records_lib.open_records(tiny_records, 'train')
  config = small_config()
  config.compat.compact_frames = True
  batch = next(iter(pipeline.train_dataset(records, config)))
  assert batch['faces'].shape == (4, 8, 112, 112, 3) and batch['audio_offsets'].shape == (4, 8)
  assert np.array_equal(batch['mask'], batch['mask'] & batch['label_mask'] & batch['face_mask'])
