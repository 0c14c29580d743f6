"""What a records build read from the tree, as digests, to tell whether the tree changed since the build.

Per entry of a split (`affwild2.VideoEntry`): the annotation file (SHA-1 of its bytes), the crop folder's listing
(SHA-1 of the sorted crop file names; a crop overwritten in place under the same name is not seen), the video and
its wav sidecar (size and SHA-1 of the first and last 64 KiB: cheap for gigabytes of video, and unchanged by a
copy or a `touch`). A fingerprint is JSON: {split: {name: {part: [path relative to the tree, digest]}}}.
"""
from __future__ import annotations

import hashlib
import os
import pathlib

from affjax.data import affwild2

ENDS = 64 * 1024  # bytes read from each end of a video or wav


def _file_bytes(path: pathlib.Path) -> str:
  return hashlib.sha1(path.read_bytes()).hexdigest()


def _media_ends(path: pathlib.Path) -> str:
  size = path.stat().st_size
  with open(path, 'rb') as f:
    head = f.read(ENDS)
    f.seek(max(size - ENDS, 0))
    tail = f.read(ENDS)
  return f'{size}:{hashlib.sha1(head + tail).hexdigest()}'


def _crop_listing(crop_dir: pathlib.Path) -> str:
  return hashlib.sha1('\n'.join(affwild2.crop_names(crop_dir)).encode()).hexdigest()


def of_entry(root: pathlib.Path, entry: affwild2.VideoEntry) -> dict[str, list[str]]:
  """{part: [path relative to root, digest]} of what building `entry`'s records reads."""
  parts = {'video': (entry.media_path, _media_ends), 'wav': (entry.wav_path, _media_ends),
           'annotation': (entry.annotation_path, _file_bytes), 'crops': (entry.crop_dir, _crop_listing)}
  return {part: [os.path.relpath(path, root), digest(path)]
          for part, (path, digest) in parts.items() if path is not None}


def of_entries(root, entries: list[affwild2.VideoEntry]) -> dict[str, dict[str, dict[str, list[str]]]]:
  """The fingerprint of every split (an empty dict for a split without entries)."""
  root = pathlib.Path(root)
  out = {split: {} for split in affwild2.SPLITS}
  for entry in entries:
    out[entry.split][entry.name] = of_entry(root, entry)
  return out


def _named_by(parts: dict[str, list[str]]) -> str:
  """Where an entry's name comes from: its annotation file, or the test list."""
  return parts['annotation'][0] if 'annotation' in parts else 'the test list'


def first_change(built: dict, now: dict) -> str | None:
  """The first difference (split order, then name, then part) between the fingerprint of a build and of the tree
  now, as a sentence naming the file; None if they agree. A moved file with the same digest is no change."""
  for split in affwild2.SPLITS:
    old, new = built.get(split, {}), now.get(split, {})
    for name in sorted(set(old) | set(new)):
      if name not in new:
        return f'{_named_by(old[name])}: {split} video {name} is gone'
      if name not in old:
        return f'{_named_by(new[name])}: {split} video {name} is new'
      for part in sorted(set(old[name]) | set(new[name])):
        if part not in new[name]:
          return f'{old[name][part][0]} ({part} of {split} video {name}) is gone'
        if part not in old[name]:
          return f'{new[name][part][0]} ({part} of {split} video {name}) is new'
        if old[name][part][1] != new[name][part][1]:
          return f'{new[name][part][0]} ({part} of {split} video {name}) changed'
  return None
