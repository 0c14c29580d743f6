"""A system defined outside `affjax/`, the worked example of adding one: `--config.model.name=tests.toy_system`
makes `affjax.systems` import this module and use its `SYSTEM` (tests/test_systems.py runs it through
`python -m affjax.main`). The model reads the frame view: each frame's mean face colour -> Dense -> tanh."""
import flax.linen as nn
import jax.numpy as jnp

from affjax import systems


class MeanColour(nn.Module):
  """faces `[B, T, S, S, 3]` uint8 -> {'va': `[B, T, 2]`} from the mean of each face's channels."""

  @nn.compact
  def __call__(self, batch, *, train: bool):
    del train
    colour = batch['faces'].astype(jnp.float32).mean(axis=(2, 3)) / 255.0
    return {'va': jnp.tanh(nn.Dense(2, kernel_init=nn.initializers.normal(0.1), name='head')(colour - 0.5))}


def build(model_config, compat):
  del model_config, compat  # no field of its own
  return MeanColour()


def validate(config):
  if 'visual' not in tuple(config.model.modalities):
    raise ValueError(f'config.model.modalities={tuple(config.model.modalities)!r} is invalid: the toy model reads '
                     'the faces')


SYSTEM = systems.System(names=('toy',), build=build, validate=validate)
