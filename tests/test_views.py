"""The data-view registry and the pipeline's genericity: a view registered from a test runs through the Grain
pipeline and maps its predictions back to frames without any edit of `affjax`."""
import dataclasses

import ml_collections
import numpy as np
import pytest

from affjax.data import pipeline, records as records_lib, views
from affjax.data.views import base, clips, frames, predictions, tokens


def config_of(**data):
  return ml_collections.ConfigDict(dict(seed=0, data=dict(num_workers=0, worker_buffer_size=2, **data),
                                        train=dict(batch_size=4), eval=dict(batch_size=4), compat=dict()))


def test_the_registry_finds_a_view_by_name_and_names_the_field_of_an_unknown_one():
  assert views.of(config_of(view='frames')) is frames.VIEW
  assert views.of(config_of(view='clips')) is clips.VIEW and views.of(config_of(view='tokens')) is tokens.VIEW
  with pytest.raises(ValueError, match=r"config.data.view='clip' is invalid: must be one of \['clips', 'frames'"):
    views.of(config_of(view='clip'))


def _video(name, num_frames):
  return records_lib.VideoIndex(name=name, num_frames=num_frames, fps=25.0, first_record=0, num_chunks=1,
                                num_rows=num_frames)


@dataclasses.dataclass(frozen=True)
class EveryThirdFrame:
  """A toy view: windows of 2 frames 3 apart; `x`: 100 x the video index + the frame number, per frame."""
  records: records_lib.Records

  def __call__(self, row, rng=None):
    video, first = self.records.videos[int(row[0])], int(row[1])
    at = first + np.array([0, 3])
    return dict(x=(100 * int(row[0]) + at).astype(np.float32), labels=np.stack([at, -at], -1).astype(np.float32),
                label_mask=at % 2 == 0, mask=at < video.num_frames, video_index=np.int32(row[0]),
                frames=np.minimum(at, video.num_frames - 1))


def toy_view():
  def windows(records, config, *, train):
    del config, train
    table = [(i, f) for i, v in enumerate(records.videos) for s in range(0, v.num_frames, 6) for f in (s, s + 1, s + 2)]
    return np.array(table, np.int64), EveryThirdFrame(records)

  return base.View(name='every_third', windows=windows, example_batch=None, validate=lambda config: None,
                   predictions=lambda records, config: predictions.OnFrames.of(records, lambda w: w['frames']))


def test_a_view_registered_outside_affjax_runs_through_the_pipeline_and_back_to_frames(monkeypatch):
  monkeypatch.setitem(views.VIEWS, 'every_third', toy_view())
  config = config_of(view='every_third')
  records = records_lib.Records(directory='', split='validation', chunk_size=8,
                                videos=(_video('a', 12), _video('b', 5)))
  table, loader = views.of(config).windows(records, config, train=False)
  assert len(table) == 9  # a: starts 0, 6 (3 windows each); b: start 0
  dataset, num_windows = pipeline.eval_dataset(records, config)
  batches = list(dataset)
  assert num_windows == 9 and [len(b['x']) for b in batches] == [4, 4, 4]
  valid = np.concatenate([b['valid_window'] for b in batches])
  np.testing.assert_array_equal(valid, np.arange(12) < 9)
  np.testing.assert_array_equal(np.concatenate([b['x'] for b in batches])[:9], [loader(r)['x'] for r in table])

  split = views.of(config).predictions(records, config)
  for batch in batches:
    for i in np.flatnonzero(batch['valid_window']):
      split.add({k: v[i] for k, v in batch.items()}, np.stack([batch['x'][i], -batch['x'][i]], -1))
  a, b = split.videos()
  np.testing.assert_allclose(a.prediction[:, 0], np.arange(12))  # each frame got the prediction made for it
  np.testing.assert_allclose(b.prediction[:, 0], 100 + np.arange(5))  # frame 5 of window (2, 5) is past the end
  np.testing.assert_array_equal(a.label_mask, np.arange(12) % 2 == 0)

  train = iter(pipeline.train_dataset(records, config))
  rows = {tuple(x) for _ in range(2) for x in next(train)['x'].tolist()}  # 8 of the 9 windows of the first epoch
  assert len(rows) == 8 and rows < {tuple(loader(r)['x'].tolist()) for r in table}
