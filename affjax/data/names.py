"""Video names that become file names: checked where they enter, joined under a root only as plain components.

A name comes from a test list, an annotation file's name or a record set's metadata, and later names files such as
`<workdir>/predictions/<split>/<name>.txt`. `check` admits only a single plain path component, so `inside` can
join checked components under a root and the result provably stays inside it.
"""
from __future__ import annotations

import pathlib

_FORBIDDEN = ('/', '\\', '\0')


class UnsafeNameError(ValueError):
  """A name that would not stay one file name inside its folder (a path separator, '..', NUL, empty)."""


def check(name: str, where: str) -> str:
  """Returns `name` if it is one plain file name; else raises UnsafeNameError naming `where` (file and line,
  or the record set) and the fix."""
  if not isinstance(name, str) or not name or name in ('.', '..') or any(c in name for c in _FORBIDDEN):
    raise UnsafeNameError(
        f'{where}: video name {name!r} is not a plain file name (empty, ".", "..", or it holds "/", "\\" or '
        'NUL, so it could name a path outside its folder); use the video\'s file name without its folder')
  return name


def inside(root, *parts: str) -> pathlib.Path:
  """`root/part/...` after checking every part with `check`: the path cannot leave `root`."""
  root = pathlib.Path(root)
  return root.joinpath(*(check(part, f'a file under {root}') for part in parts))
