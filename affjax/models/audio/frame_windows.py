"""Per-frame windows of a waveform segment: what the per-frame audio front-ends of every system read."""
from __future__ import annotations

import jax

Array = jax.Array


def slice_audio_windows(audio: Array, offsets: Array, window: int) -> Array:
  """Per-frame windows from one waveform segment per sequence.

  audio `[B, L]`, offsets `[B, T]` int (start of frame t's window in the segment) -> `[B, T, window]`.
  Offsets are clamped into `[0, L - window]` (`lax.dynamic_slice` semantics).
  """
  one = lambda seg, off: jax.lax.dynamic_slice(seg, (off,), (window,))
  return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(audio, offsets)
