"""Device mesh, shardings and multi-host start: data parallelism over every device of every host."""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

# Launchers whose environment jax.distributed.initialize() reads by itself.
_MULTIHOST_ENV = ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize() when launched as several processes (coordinator address given,
  or a SLURM/Open MPI launch of more than one task); a plain single-host run starts nothing."""
  launched = [k for k in _MULTIHOST_ENV if os.environ.get(k) not in (None, '', '1')]
  if launched:
    logging.info('multi-host launch detected (%s): initialising jax.distributed', ', '.join(launched))
    jax.distributed.initialize()


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh) -> jax.NamedSharding:
  return jax.NamedSharding(mesh, jax.P('data'))


def replicated(mesh) -> jax.NamedSharding:
  return jax.NamedSharding(mesh, jax.P())


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays split along 'data' over every device."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(x: jax.Array) -> np.ndarray:
  """A global array (possibly spread over hosts) -> the whole array on every host, in global row order."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
