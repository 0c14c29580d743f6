"""The data views, found by `config.data.view` (`base.View`): 'frames' (windows of T frames, the default),
'clips' (RJCA's windows of clips) and 'tokens' (the sparse model's windows of tokens). Feature caches
(`features`) and compacted training windows (`compact`) are read through the frame and clip views."""
from __future__ import annotations

from affjax.data.views import base, clips, frames, tokens

VIEWS: dict[str, base.View] = {view.name: view for view in (frames.VIEW, clips.VIEW, tokens.VIEW)}


def of(config) -> base.View:
  """The view `config.data.view` names."""
  name = config.data.view
  base.require(name in VIEWS, 'data.view', name, f'must be one of {sorted(VIEWS)}')
  return VIEWS[name]
