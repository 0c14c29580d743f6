"""The systems, found by `config.model.name`: one package per system under `affjax/systems/`, each exposing `SYSTEM`
(a `System`: its model builder, config checks, parameter labels, warm-up, the data views it reads and the hooks
of its extras). The registry is a lookup, not a list:

  a name registered before (`register`, or a package imported before)   -> that system
  a dotted module path (`--config.model.name=tests.toy_system`)          -> that module's `SYSTEM`
  any other name                                                          -> the `SYSTEM.names` of the packages
                                                                             under affjax/systems/, imported once

so a system defined outside `affjax/` runs through `python -m affjax.main` unchanged (tests/toy_system.py).
Shared code asks the system for what differs (`build_model`, `param_labels`, `warmup_model`, `prepare`), never
compares `config.model.name`.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Collection, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

ConfigDict = ml_collections.ConfigDict
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class System:
  """What shared code needs of a system; every hook but `build` is optional.

  names: the values of `config.model.name` that select it (a module found by its dotted path needs none).
  build: (config.model, config.compat) -> the Linen module; `__call__(batch, *, train)` -> {'va': [B, T, 2], ...}.
  views: the data views (`config.data.view`) whose batches the model reads.
  validate: (config) -> None, raising ValueError 'config.<field>=...' before any record, feature or compilation
    work; None: building the model from the config is the check.
  param_labels: (config.model) -> `params -> 'train' | 'frozen'` labels for the optimiser, or None.
  warmup: (model, config.model) -> (module, steps) the first `steps` training steps run instead (same
    variables), or None.
  prepare: (config, records_dir, workdir) -> the config a run trains with, once its inputs are ready (LFAN:
    follower features built, their statistics filled in).
  aux_classes: (config.model) -> the classes of the model's auxiliary head ('cat' logits; 0: none).
  release_groups: the layer groups the epoch recipe can release one by one (`config.model.released`; 0: none).
  side_shapes: (config) -> part -> per-frame shape of the features the model reads beside faces and audio, which
    training joins to the frame records from a feature cache (`<part>_features`; LFAN's VGGish), or {}.
  side_features: (config) -> the function computing those features from records (a video's, for `affjax.predict`)
    as the run's feature cache holds them.
  trained_config: (config, workdir) -> the config the run at `workdir` trained with, where the run completed it
    from its training data (LFAN: the follower statistics it saved), to predict new inputs with.
  upstream_converters: name -> (converter, the upstream model and file it reads) of the trained upstream PyTorch
    models it converts (`affjax.systems.converters`, `tools/convert_torch.py --network=<name>`).
  """
  names: tuple[str, ...]
  build: Callable[[ConfigDict, ConfigDict], nn.Module]
  views: tuple[str, ...] = ('frames',)
  validate: Callable[[ConfigDict], None] | None = None
  param_labels: Callable[[ConfigDict], Callable | None] | None = None
  warmup: Callable[[nn.Module, ConfigDict], tuple[nn.Module, int] | None] | None = None
  prepare: Callable[[ConfigDict, str, Any], ConfigDict] | None = None
  aux_classes: Callable[[ConfigDict], int] | None = None
  release_groups: int = 0
  side_shapes: Callable[[ConfigDict], dict[str, tuple[int, ...]]] | None = None
  side_features: Callable[[ConfigDict], Callable] | None = None
  trained_config: Callable[[ConfigDict, Any], ConfigDict] | None = None
  upstream_converters: Mapping[str, tuple[Callable, str]] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, System] = {}


def register(system: System, name: str | None = None) -> System:
  """Makes `system` found by each of its names (or by `name`); a name taken by another system raises ValueError."""
  for key in (name,) if name else system.names:
    if _REGISTRY.get(key, system) is not system:
      raise ValueError(f'config.model.name={key!r} is taken by another system')
    _REGISTRY[key] = system
  return system


def _import_built_in() -> None:
  for package in (p for p in pkgutil.iter_modules(__path__) if p.ispkg):
    register(importlib.import_module(f'{__name__}.{package.name}').SYSTEM)


def built_in() -> dict[str, System]:
  """Name -> system, for every package under affjax/systems/."""
  _import_built_in()
  return {name: system for name, system in _REGISTRY.items() if '.' not in name}


def get(name: str) -> System:
  """The system `config.model.name=name` selects; an unknown name raises ValueError naming the known ones."""
  if name not in _REGISTRY:
    if '.' in name:
      try:
        module = importlib.import_module(name)
      except ModuleNotFoundError as e:
        raise ValueError(f'config.model.name={name!r}: no module {e.name!r} to import the system from') from e
      if not isinstance(getattr(module, 'SYSTEM', None), System):
        raise ValueError(f'config.model.name={name!r}: the module defines no SYSTEM (an affjax.systems.System)')
      register(module.SYSTEM, name)
    else:
      _import_built_in()
  if name not in _REGISTRY:
    known = sorted(built_in())
    raise ValueError(f'config.model.name={name!r} is not one of {known}, nor the dotted path of a module that '
                     'defines SYSTEM (an affjax.systems.System)')
  return _REGISTRY[name]


def of(config) -> System:
  """The system of `config` (`config.model.name`)."""
  return get(config.model.name)


def field(cfg: ConfigDict, name: str, allowed: Collection[Any]) -> Any:
  """`cfg[name]` (a field of `config.model`), one of `allowed` (the keys of a mapping); another value raises
  ValueError naming the field."""
  value = cfg[name]
  if value not in allowed:
    raise ValueError(f'config.model.{name}={value!r} is not one of {list(allowed)}')
  return value


def dtype(cfg: ConfigDict) -> Any:
  """The compute dtype `config.model.dtype` names."""
  return DTYPES[field(cfg, 'dtype', DTYPES)]


def build_model(model_config: ConfigDict, compat: ConfigDict) -> nn.Module:
  """The Linen module of the system `model_config.name` names, built from the config's fields and the reference
  quirks of `compat` (`config.compat`) its layers implement; a bad field raises ValueError naming it."""
  return get(model_config.name).build(model_config, compat)


def validate(config) -> None:
  """The system's checks of `config` (ValueError naming the field): the data view it reads, then its own."""
  system = of(config)
  if config.data.view not in system.views:
    raise ValueError(f'config.data.view={config.data.view!r} is invalid: the {config.model.name} model reads '
                     f'the {" or ".join(system.views)} view')
  if system.validate is None:
    system.build(config.model, config.compat)
  else:
    system.validate(config)


def param_labels(model_config: ConfigDict) -> Callable | None:
  """`params -> {'train', 'frozen'} labels` for systems with layers frozen by their own schedule, else None."""
  hook = get(model_config.name).param_labels
  return hook(model_config) if hook else None


def warmup_model(model: nn.Module, model_config: ConfigDict) -> tuple[nn.Module, int] | None:
  """(module, steps): what the first `steps` training steps run instead of `model` (same variables), or None."""
  hook = get(model_config.name).warmup
  return hook(model, model_config) if hook else None


def prepare(config, records_dir: str, workdir) -> ConfigDict:
  """`config` with the system's extra inputs ready (its `prepare` hook; unchanged for most systems)."""
  hook = of(config).prepare
  return hook(config, records_dir, workdir) if hook else config


def aux_classes(model_config: ConfigDict) -> int:
  """The classes of the model's auxiliary head (0: it has none)."""
  hook = get(model_config.name).aux_classes
  return hook(model_config) if hook else 0


def side_shapes(config) -> dict[str, tuple[int, ...]]:
  """Part -> per-frame shape of the side features the model reads (`System.side_shapes`); {} for most systems."""
  hook = of(config).side_shapes
  return hook(config) if hook else {}


def side_features(config) -> Callable | None:
  """The function computing the side features of records from their audio (`System.side_features`), or None."""
  hook = of(config).side_features
  return hook(config) if hook else None


def trained_config(config, workdir) -> ConfigDict:
  """The config the run at `workdir` trained with, completed as it completed it (`System.trained_config`)."""
  hook = of(config).trained_config
  return hook(config, workdir) if hook else config
