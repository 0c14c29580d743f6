"""Builds the ArrayRecord shards of an Aff-Wild2 tree (a rerun over the same tree does nothing; over a changed tree
it stops, naming the first changed file; --rebuild deletes the records of this chunk size and builds them again).

  python tools/build_records.py --manual_dir=/data/Aff-Wild2 --records_dir=~/affwild2_records [--chunk_size=32]
"""
import logging

from absl import app, flags

_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'Root of the Aff-Wild2 release tree.', required=True)
_RECORDS_DIR = flags.DEFINE_string('records_dir', None, 'Where to write the records.', required=True)
_CHUNK_SIZE = flags.DEFINE_integer('chunk_size', 32, 'Frames per record (config.data.chunk_size).')
_TEST_LIST = flags.DEFINE_string('test_list', 'va_test_set.txt', 'Test video names, relative to manual_dir.')
_REBUILD = flags.DEFINE_bool('rebuild', False, 'Delete the records of this chunk size first (after the tree changed, '
                             'or a shard was damaged) and build them again.')


def main(argv):
  del argv
  from affjax.data import builder  # pylint: disable=g-import-not-at-top
  built = builder.build(_MANUAL_DIR.value, _RECORDS_DIR.value, chunk_size=_CHUNK_SIZE.value,
                        test_list=_TEST_LIST.value, rebuild=_REBUILD.value)
  logging.info('records: %s (use --config.data.records_dir=%s)', built.data_dir, _RECORDS_DIR.value)
  for split in ('train', 'validation', 'test'):
    videos = built.info.metadata['videos'][split]
    print(f'{split}: {len(videos)} videos, {sum(v["num_chunks"] for v in videos)} chunks, '
          f'{builder.summarize_reports([v["report"] for v in videos])}')


if __name__ == '__main__':
  app.run(main)
