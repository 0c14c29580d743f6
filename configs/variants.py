"""The one variant parser: `configs/<system>.py:v1,v2` applies the variants v1 and v2 of that system's config.

The rule: a system lists its variants, each a function that edits the config in place, in the order they apply
(`VARIANTS` in its config file). The order on the command line does not matter: `:smoke,paper` and `:paper,smoke`
give the same config. Every system lists its full-size recipe (`paper` / `full`) before `smoke`, so that the pair
is the full recipe shrunk to smoke size; a later variant overrides an earlier one where both set a field
(`:audio,visual` is the faces-only model).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import ml_collections

Variant = Callable[[ml_collections.ConfigDict], None]


def apply(config: ml_collections.ConfigDict, arg: str,
          variants: Sequence[tuple[str, Variant]]) -> ml_collections.ConfigDict:
  """`config` with the comma-separated variants of `arg` applied in the order of `variants` (name, function);
  an unknown name raises ValueError naming it and the known ones."""
  known = [name for name, _ in variants]
  chosen = {a.strip() for a in arg.split(',')} - {''}
  unknown = sorted(chosen - set(known))
  if unknown:
    raise ValueError(f'unknown config variant {", ".join(map(repr, unknown))} in get_config({arg!r}); '
                     f'known variants: {", ".join(known)}')
  for name, variant in variants:
    if name in chosen:
      variant(config)
  return config
