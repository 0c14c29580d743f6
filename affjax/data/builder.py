"""TFDS builder `affwild2`: the Aff-Wild2 tree (manual_dir) -> ArrayRecord shards of per-video chunks.

One record holds `chunk_size` consecutive frames of one video: the face JPEGs as released (b'' where no
crop exists), the masks, the labels, and the 16 kHz audio samples the chunk's frames own
([frame_boundary_sample(start), frame_boundary_sample(start + C)) clipped to the video's end). The last
chunk of a video is padded with frame_mask = False. Records are written in generation order (no
shuffling), video after video, so a video's chunks are consecutive record indices; the per-video index
(record offset, frame count, fps, what the reader reported) is stored in the dataset's metadata.json, with
what the build read (`fingerprint`: a rerun over a changed tree stops, naming the first changed file), the size of
every shard (`shards`: a truncated or deleted shard is named when the records are opened) and the build's
arguments (`build`: the rebuild command). A split without videos (no test list yet, no validation set) has no
shard and an empty index.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shlex
import shutil

import numpy as np
import tensorflow_datasets as tfds

from affjax.data import affwild2, fingerprint

SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass
class Affwild2Config(tfds.core.BuilderConfig):
  chunk_size: int = 32
  test_list: str = 'va_test_set.txt'


class Affwild2(tfds.core.GeneratorBasedBuilder):
  """Aff-Wild2 valence/arousal, face crops + audio, as per-video chunks."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.1.0': 'fingerprint of the tree, shard sizes and the build arguments in the metadata; '
                            'splits without videos have no shard'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Request Aff-Wild2 from its authors and pass the release tree (cropped_aligned/, annotations/, '
      'videos/ or batch1/ batch2/, the test list) as --config.data.manual_dir.')
  BUILDER_CONFIG_CLASS = Affwild2Config

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config.chunk_size
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Tensor(shape=(), dtype=np.str_),
            'start': tfds.features.Scalar(dtype=np.int64),
            'fps': tfds.features.Scalar(dtype=np.float64),
            'faces': tfds.features.Tensor(shape=(c,), dtype=np.object_),
            'face_mask': tfds.features.Tensor(shape=(c,), dtype=np.bool_),
            'frame_mask': tfds.features.Tensor(shape=(c,), dtype=np.bool_),
            'label_mask': tfds.features.Tensor(shape=(c,), dtype=np.bool_),
            'labels': tfds.features.Tensor(shape=(c, 2), dtype=np.float32),
            'audio': tfds.features.Tensor(shape=(None,), dtype=np.float32),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    entries = affwild2.list_videos(dl_manager.manual_dir, test_list=self.builder_config.test_list)
    if not entries:
      raise affwild2.AffWild2Error(f'{dl_manager.manual_dir}: no annotation file and no test name found; unpack '
                                   'the VA annotations of the release into its annotations/ folder')
    self.info.metadata.update(
        chunk_size=self.builder_config.chunk_size, videos={split: [] for split in SPLITS},
        fingerprint=fingerprint.of_entries(dl_manager.manual_dir, entries),
        build=dict(manual_dir=str(pathlib.Path(dl_manager.manual_dir).absolute()),
                   test_list=self.builder_config.test_list))
    return {split: self._generate_examples([e for e in entries if e.split == split], split)
            for split in SPLITS if any(e.split == split for e in entries)}

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    super()._download_and_prepare(dl_manager, download_config)
    record_shard_sizes(self.info)

  def _generate_examples(self, entries, split):
    index = self.info.metadata['videos'][split]
    record = 0
    for entry in entries:
      video = affwild2.load_video(entry)
      num_chunks = -(-video.num_frames // self.builder_config.chunk_size)
      index.append(dict(name=entry.name, num_frames=video.num_frames, fps=video.fps,
                        first_record=record, num_chunks=num_chunks, report=video.report))
      for chunk in range(num_chunks):
        yield f'{record:010d}', self._chunk(entry, video, chunk)
        record += 1
    logging.info('affwild2 %s: %d videos, %d chunks, %s', split, len(index), record,
                 summarize_reports([v['report'] for v in index]))

  def _chunk(self, entry, video: affwild2.Video, chunk: int) -> dict:
    c = self.builder_config.chunk_size
    start = chunk * c
    frames = np.arange(start, start + c)
    present = frames < video.num_frames
    k = frames[present]

    def pad(values, fill=0):
      out = np.full((c,) + values.shape[1:], fill, dtype=values.dtype)
      out[:len(k)] = values[k]
      return out

    face_mask = pad(video.face_mask, False)
    faces = np.array([affwild2.read_jpeg(entry, int(f)) if has_face else b''
                      for f, has_face in zip(frames, face_mask)], dtype=object)
    a0 = affwild2.frame_boundary_sample(start, video.fps)
    a1 = affwild2.frame_boundary_sample(min(start + c, video.num_frames), video.fps)
    return dict(video=entry.name, start=start, fps=video.fps, faces=faces, face_mask=face_mask,
                frame_mask=present, label_mask=pad(video.label_mask, False), labels=pad(video.labels),
                audio=video.audio[a0:a1])


def record_shard_sizes(info: tfds.core.DatasetInfo) -> None:
  """Stores the size of every written shard in the metadata (`shards`: {split: {file name: bytes}}), so that
  `records.check_shards` can tell a truncated or deleted shard when the records are opened."""
  info.metadata['shards'] = {split: {p.name: os.path.getsize(p) for p in split_info.filepaths}
                             for split, split_info in info.splits.items()}


def summarize_reports(reports: list[dict[str, int]]) -> dict[str, int]:
  """Sums the reader's per-video counts (frames, missing crops, -5 rows, ...) over videos."""
  total: dict[str, int] = {}
  for report in reports:
    for key, value in report.items():
      total[key] = total.get(key, 0) + int(value)
  return total


def dataset_dir(records_dir, chunk_size: int) -> pathlib.Path:
  """Where `build` writes the records of this chunk size (the directory the pipeline reads)."""
  return pathlib.Path(records_dir).expanduser() / 'affwild2' / f'chunk{chunk_size}' / str(Affwild2.VERSION)


def rebuild_command(manual_dir, records_dir, chunk_size: int, test_list: str) -> str:
  """The shell command that rebuilds these records from scratch."""
  args = [f'--manual_dir={pathlib.Path(manual_dir).expanduser().absolute()}',
          f'--records_dir={pathlib.Path(records_dir).expanduser().absolute()}', f'--chunk_size={chunk_size}',
          f'--test_list={test_list}', '--rebuild']
  return ' '.join(['python', 'tools/build_records.py'] + [shlex.quote(a) for a in args])


class StaleRecordsError(RuntimeError):
  """The tree changed since its records were built; the message names the first changed file and the rebuild."""


def check_fresh(directory, manual_dir, test_list: str, fix: str) -> None:
  """Raises StaleRecordsError (naming the first changed file, then `fix`) if the records or feature cache at
  `directory` were not built from `manual_dir` as it is now."""
  built = tfds.builder_from_directory(str(directory)).info.metadata.get('fingerprint')
  if built is None:
    raise StaleRecordsError(f'{directory} holds no fingerprint of the tree it was built from. {fix}')
  now = fingerprint.of_entries(manual_dir, affwild2.list_videos(manual_dir, test_list=test_list))
  change = fingerprint.first_change(built, now)
  if change:
    raise StaleRecordsError(f'{directory} was built from another state of {manual_dir}: {change} since. {fix}')


def build(manual_dir, records_dir, *, chunk_size: int = 32, test_list: str = 'va_test_set.txt',
          rebuild: bool = False):
  """Builds the records once and returns the builder.

  A rerun over complete records compares what the build read with the tree now (`affjax.data.fingerprint`): the
  same tree reuses them, a changed one raises StaleRecordsError naming the first changed file and the command
  that rebuilds them (`rebuild=True`: delete the records of this chunk size first and build them again).
  """
  manual_dir = pathlib.Path(manual_dir).expanduser()
  directory = dataset_dir(records_dir, chunk_size)
  if rebuild and directory.exists():
    logging.info('deleting the records %s to rebuild them', directory)
    shutil.rmtree(directory)
  if directory.exists():
    check_fresh(directory, manual_dir, test_list,
                f'Rebuild them (every split): {rebuild_command(manual_dir, records_dir, chunk_size, test_list)}')
  builder = Affwild2(data_dir=str(pathlib.Path(records_dir).expanduser()),
                     config=Affwild2Config(name=f'chunk{chunk_size}', chunk_size=chunk_size,
                                           test_list=test_list),
                     file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder
