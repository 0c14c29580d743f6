"""A whole upstream PyTorch model as an affjax run directory (`tools/convert_torch.py --network=<system>
--checkpoint=... --out_workdir=RUN`): `--mode=eval` restores it as if affjax had trained it, and writes the ABAW
files and metrics.

  RUN/converted/<part>.msgpack   the converted variables of each model part (backbones, fusion, heads)
  RUN/config.py                  configs/<system>.py with the fields the checkpoint fixes, the compat flags its
                                 layers need, and `model.pretrained` naming the converted parts (other entries,
                                 e.g. LFAN's VGGish feature network, stay the system's: set them at evaluation)
  RUN/checkpoints/0/             the train state holding them (Orbax, no data-iterator state)

`--mode=train` on RUN starts from the converted weights (step 0 has no data state to resume from).
"""
from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import ml_collections

from affjax import checkpoint, systems
from affjax.models import torch_convert
from affjax.systems import converters as system_converters
from affjax.train import optim, state as state_lib

_CONFIG_FILE = '''"""Written by tools/convert_torch.py --network={system} from {source}:
configs/{base}.py holding the converted upstream model.

  python -m affjax.main --config={workdir}/config.py --workdir={workdir} --mode=eval
"""
import ml_collections

from configs import {base}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = {base}.get_config(arg)
  config.model.update({model!r})
  config.data.update({data!r})
  config.compat.update({compat!r})
  config.model.pretrained.update({pretrained!r})
  return config
'''


def load_config(path: pathlib.Path, arg: str = '') -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file (what `--config=PATH:arg` loads)."""
  spec = importlib.util.spec_from_file_location(f'converted_config_{abs(hash(str(path)))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def read_checkpoints(paths: str) -> torch_convert.StateDict:
  """The tensors of one checkpoint, or of several given comma-separated (e.g. RJCA's backbones and fusion),
  which must not share a name."""
  merged, origin = {}, {}
  for path in paths.split(','):
    for name, tensor in torch_convert.read_torch_checkpoint(path).items():
      if name in merged:
        raise ValueError(f'{path} and {origin[name]} both hold a tensor {name!r}: give checkpoints of different parts')
      merged[name], origin[name] = tensor, path
  return merged


def write_run(system: str, checkpoint_path: str, workdir: str,
              options: system_converters.Options = system_converters.Options()) -> tuple[pathlib.Path, str]:
  """Converts the upstream `system` checkpoint (with what it does not tell in `options`) into the run directory
  `workdir`; returns (its config file, a report of what was read and left out)."""
  workdir = pathlib.Path(workdir).expanduser().absolute()
  if (workdir / 'checkpoints').exists():
    raise FileExistsError(f'{workdir} already holds checkpoints: give --out_workdir a new directory')
  conversion = system_converters.convert_system(system, read_checkpoints(checkpoint_path), checkpoint_path, options)
  (workdir / 'converted').mkdir(parents=True, exist_ok=True)
  parts = {}
  for part in conversion.variables['params']:
    parts[part] = str(workdir / 'converted' / f'{part}.msgpack')
    variables = {collection: tree[part] for collection, tree in conversion.variables.items() if part in tree}
    torch_convert.save_variables(parts[part], variables)
  config_path = workdir / 'config.py'
  config_path.write_text(_CONFIG_FILE.format(system=system, source=checkpoint_path, base=conversion.config,
                                             workdir=workdir, model=conversion.model, data=conversion.data,
                                             compat=conversion.compat,
                                             pretrained=parts))
  config = load_config(config_path)
  tx = optim.make_optimizer(config, systems.param_labels(config.model))
  params = jax.tree.map(jnp.asarray, conversion.variables['params'])
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               batch_stats=jax.tree.map(jnp.asarray, conversion.variables['batch_stats']),
                               opt_state=tx.init(params), rng=jax.random.key(config.seed))
  # Every part's names and shapes are checked against the model when a run loads `model.pretrained`
  # (`affjax.train.state.initial_state`); evaluation then restores this state.
  checkpoints = checkpoint.Checkpointer(workdir)
  try:
    checkpoints.save(0, state, None)
  finally:
    checkpoints.close()
  return config_path, conversion.report
