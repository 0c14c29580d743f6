"""Whole upstream PyTorch models -> an affjax system's variables and the config fields they fix
(`tools/convert_torch.py --network=<system> --checkpoint=... --out_workdir=RUN`; `affjax.converted_run` writes
the run directory): what every system's converter shares. Each system's own converters live in its package
(`affjax/systems/<package>/convert.py`) and are found through its `System.upstream_converters`.

Each converter reads the state dict with the upstream model's own names; its backbones go through the
`converters` of `tools/convert_torch.py --network=<backbone>`, recognised by which of them fits.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from affjax import systems
from affjax.models import converters, torch_convert


class Options(NamedTuple):
  """What a whole-model checkpoint does not tell: attention heads (Karas et al.'s attention models), and which
  emotion a one-output LFAN model predicts (the paper trains one model per emotion)."""
  num_heads: int = 4
  emotion: str = ''


class SystemConversion(NamedTuple):
  config: str  # the configs/<config>.py the run builds on
  model: dict[str, Any]  # config.model fields the checkpoint fixes (backbones, widths, layers, heads)
  data: dict[str, Any]  # config.data fields it fixes (input sizes)
  compat: dict[str, bool]  # config.compat flags the upstream layers need
  variables: dict  # {'params': {part: ...}, 'batch_stats': {part: ...}}
  report: str  # what was read where, and what was left out


Converter = Callable[[torch_convert.StateDict, str, Options], SystemConversion]


def backbone(state_dict: torch_convert.StateDict, names: Iterable[str], prefix: str,
              source: str) -> tuple[str, converters.Conversion]:
  """The one backbone of `names` whose converter reads every tensor under `prefix`, and its conversion."""
  fits, errors = {}, {}
  for name in names:
    try:
      fits[name] = converters.convert_state_dict(name, state_dict, source, prefix)
    except ValueError as e:
      errors[name] = str(e)
  if not fits:
    why = '; '.join(f'{name}: {error}' for name, error in errors.items())
    raise ValueError(f'{source}: the tensors under {prefix!r} are none of the backbones {sorted(names)}. {why}')
  if len(fits) > 1:
    raise ValueError(f'{source}: the tensors under {prefix!r} fit several backbones: {sorted(fits)}')
  return next(iter(fits.items()))


def backbone_line(name: str, conversion: converters.Conversion) -> str:
  heads = conversion.heads_left_out
  return f'{name} under {conversion.prefix!r}' + (f', left out: {torch_convert.name_list(heads)}' if heads else '')


def without(state_dict: torch_convert.StateDict, prefixes: tuple[str, ...]) -> torch_convert.StateDict:
  return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}


def count(sd: torch_convert.StateDictReader, pattern: str) -> int:
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def layer_norm(sd: torch_convert.StateDictReader, prefix: str) -> dict:
  return {'scale': sd[f'{prefix}.weight'], 'bias': sd[f'{prefix}.bias']}


def upstream_models() -> dict[str, tuple[Converter, str]]:
  """System name -> (its converter, the upstream model and file it reads), over every built-in system."""
  return {name: upstream for system in systems.built_in().values()
          for name, upstream in system.upstream_converters.items()}


def convert_system(system: str, state_dict: torch_convert.StateDict, source: str = 'checkpoint',
                   options: Options = Options()) -> SystemConversion:
  """`system`'s conversion of an upstream whole-model state dict; raises ValueError naming the first missing
  tensor, or those left unread, when the checkpoint is not of that model."""
  known = upstream_models()
  if system not in known:
    raise ValueError(f'no whole-model converter for {system!r}; known: {sorted(known)}')
  convert, upstream = known[system]
  try:
    return convert(state_dict, source, options)
  except torch_convert.MissingTensor as e:
    raise ValueError(f'not a checkpoint of {upstream}: {e}') from None
