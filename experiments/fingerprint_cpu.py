"""Times the check every run makes of its records against the tree (`affjax.data.fingerprint`) on a tree the size of
Aff-Wild2's index.

Writes `--videos` annotated entries (a video of `--video_mb` MB, a 2-column annotation of `--crops` rows, a crop folder
of `--crops` small files) under `--tree` once, then times, after one warm-up, `--repeats` times each: the baseline
`os.listdir` of every crop folder (the least any check of the listings costs), `affwild2.list_videos` (the one walk
that indexes the videos) and `fingerprint.of_entries` (annotation hashes, crop listings, video ends). Prints medians
(page cache warm) as a markdown table.

  PYTHONPATH=. python experiments/fingerprint_cpu.py --tree=/tmp/fp_tree [--videos=100 --crops=3000 --repeats=5]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time

from affjax.data import affwild2, fingerprint


def write_tree(root: pathlib.Path, videos: int, crops: int, video_mb: int) -> None:
  if (root / 'done').exists():
    return
  annotations = root / 'annotations/VA_Estimation_Challenge/Train_Set'
  annotations.mkdir(parents=True, exist_ok=True)
  rows = 'valence,arousal\n' + '0.125,-0.25\n' * crops
  for i in range(videos):
    name = f'{i}-30-1280x720'
    video = root / 'videos' / f'batch{i % 3 + 1}' / f'{name}.mp4'
    video.parent.mkdir(parents=True, exist_ok=True)
    with open(video, 'wb') as f:
      f.write(os.urandom(video_mb << 20))
    (annotations / f'{name}.txt').write_text(rows)
    crop_dir = root / 'cropped_aligned' / name
    crop_dir.mkdir(parents=True, exist_ok=True)
    for k in range(1, crops + 1):
      (crop_dir / f'{k:05d}.jpg').write_bytes(b'\xff\xd8')
  (root / 'done').write_text('')


def median_seconds(fn, repeats: int) -> float:
  fn()  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tree', required=True)
  parser.add_argument('--videos', type=int, default=100)
  parser.add_argument('--crops', type=int, default=3000)
  parser.add_argument('--video_mb', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  root = pathlib.Path(args.tree)
  write_tree(root, args.videos, args.crops, args.video_mb)
  entries = affwild2.list_videos(root, test_list=None)
  listing = median_seconds(lambda: [os.listdir(e.crop_dir) for e in entries], args.repeats)
  index = median_seconds(lambda: affwild2.list_videos(root, test_list=None), args.repeats)
  digests = median_seconds(lambda: fingerprint.of_entries(root, entries), args.repeats)
  print(f'{len(entries)} videos x {args.crops} crops, load average {os.getloadavg()[0]:.1f}')
  print('| step | median s | vs listdir of the crop folders |\n| --- | --- | --- |')
  for step, seconds in (('os.listdir of every crop folder (baseline)', listing), ('list_videos (index walk)', index),
                        ('fingerprint.of_entries', digests), ('check (list_videos + of_entries)', index + digests)):
    print(f'| {step} | {seconds:.3f} | {seconds / listing:.1f}x |')


if __name__ == '__main__':
  main()
