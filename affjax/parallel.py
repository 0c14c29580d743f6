"""Device mesh, shardings and multi-host start: data parallelism over every device of every host."""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

# Launchers whose environment jax.distributed.initialize() reads by itself.
_CLUSTER_ENV = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')
# The plain launch: jax.distributed.initialize() reads only the address from the environment, not the rest.
_PLAIN_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize() when launched as several processes: with `JAX_COORDINATOR_ADDRESS`
  (host:port of process 0), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` set on every process, or by a SLURM/Open MPI
  launch of more than one task; a plain single-host run starts nothing."""
  plain = {k: os.environ.get(k, '') for k in _PLAIN_ENV}
  if plain['JAX_COORDINATOR_ADDRESS']:
    missing = [k for k, v in plain.items() if not v]
    if missing:
      raise ValueError(f'JAX_COORDINATOR_ADDRESS is set but {", ".join(missing)} is not: set all of {_PLAIN_ENV} '
                       'on every process of a multi-host launch (or unset JAX_COORDINATOR_ADDRESS)')
    logging.info('multi-host launch: process %s of %s, coordinator %s', plain['JAX_PROCESS_ID'],
                 plain['JAX_NUM_PROCESSES'], plain['JAX_COORDINATOR_ADDRESS'])
    jax.distributed.initialize(plain['JAX_COORDINATOR_ADDRESS'], num_processes=int(plain['JAX_NUM_PROCESSES']),
                               process_id=int(plain['JAX_PROCESS_ID']))
    return
  launched = [k for k in _CLUSTER_ENV if os.environ.get(k) not in (None, '', '1')]
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
