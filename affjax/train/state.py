"""The train state pytree and its creation."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from affjax.data import pipeline


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def example_batch(config, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a pipeline batch of `batch_size` windows (the model's input signature)."""
  d = config.data
  t, s = d.window, d.image_size
  return dict(faces=np.zeros((batch_size, t, s, s, 3), np.uint8),
              audio=np.zeros((batch_size, pipeline.audio_segment_length(t, d.audio_window, d.min_fps)),
                             np.float32),
              audio_offsets=np.zeros((batch_size, t), np.int32), mask=np.ones((batch_size, t), bool))


def create_state(model, tx, config, rng: jax.Array) -> TrainState:
  """Initialises the model on an example batch; jit this with replicated out_shardings."""
  init_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  variables = model.init({'params': init_rng, 'dropout': dropout_rng},
                         jax.tree.map(jnp.asarray, example_batch(config, 1)), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params), rng=state_rng)
