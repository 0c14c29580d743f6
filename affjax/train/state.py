"""The train state pytree and its creation."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from affjax import parallel, systems
from affjax.data import views
from affjax.models import torch_convert


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def example_batch(config, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a pipeline batch of `batch_size` windows of the run's view (the model's input signature;
  from a feature cache its `<part>_features`), with the side features the system reads beside faces and audio
  (`systems.side_shapes`: LFAN's VGGish), whether a feature cache joins them or a video's audio gives them."""
  example = views.of(config).example_batch(config, batch_size)
  t = example['mask'].shape[1]
  side = {f'{part}_features': np.zeros((batch_size, t, *shape), np.float32)
          for part, shape in systems.side_shapes(config).items()}
  return dict(example, **side)


def init_variables(model, config, rng: jax.Array) -> tuple[dict[str, Any], jax.Array]:
  """The model's initial variables, from an example batch of one window, and the train state's key."""
  init_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  variables = model.init({'params': init_rng, 'dropout': dropout_rng},
                         jax.tree.map(jnp.asarray, example_batch(config, 1)), train=False)
  return variables, state_rng


def create_state(model, tx, config, rng: jax.Array, pretrained=None) -> TrainState:
  """Initialises the model, puts in the `pretrained` parts (from `torch_convert.load_pretrained`), and
  initialises the optimiser on the result; jit this with replicated out_shardings."""
  variables, state_rng = init_variables(model, config, rng)
  variables = torch_convert.merge_pretrained(variables, pretrained or {})
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params), rng=state_rng)


def initial_state(model, tx, config, mesh: jax.sharding.Mesh, seed: int) -> TrainState:
  """The train state replicated over `mesh`, with the converted checkpoints `config.model.pretrained` names."""
  abstract, _ = jax.eval_shape(lambda r: init_variables(model, config, r), jax.random.key(seed))
  cached = example_batch(config, 1)  # parts that come from a feature cache have no backbone to load
  parts = {part: path for part, path in config.model.pretrained.items() if f'{part}_features' not in cached}
  pretrained = torch_convert.load_pretrained(parts, abstract)
  with jax.set_mesh(mesh):
    return jax.jit(lambda r, p: create_state(model, tx, config, r, p),
                   out_shardings=parallel.replicated(mesh))(jax.random.key(seed), pretrained)
