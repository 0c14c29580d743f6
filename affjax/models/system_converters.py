"""Whole upstream PyTorch models -> an affjax system's variables and the config fields they fix
(`tools/convert_torch.py --network=<system> --checkpoint=... --out_workdir=RUN`; `affjax.converted_run` writes
the run directory).

Each converter reads the state dict with the upstream model's own names; its backbones go through the
`converters` of `tools/convert_torch.py --network=<backbone>`, recognised by which of them fits.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from affjax.models import converters, temporal, torch_convert
from affjax.models.av_model import AUDIO_BACKBONES, VISUAL_BACKBONES


class SystemConversion(NamedTuple):
  config: str  # the configs/<config>.py the run builds on
  model: dict[str, Any]  # config.model fields the checkpoint fixes (backbones, widths, layers, heads)
  compat: dict[str, bool]  # config.compat flags the upstream layers need
  variables: dict  # {'params': {part: ...}, 'batch_stats': {part: ...}}
  report: str  # what was read where, and what was left out


def _backbone(state_dict: torch_convert.StateDict, names: Iterable[str], prefix: str,
              source: str) -> tuple[str, converters.Conversion]:
  """The one backbone of `names` whose converter reads every tensor under `prefix`, and its conversion."""
  fits, errors = {}, {}
  for name in names:
    try:
      fits[name] = converters.convert_state_dict(name, state_dict, source, prefix)
    except ValueError as e:
      errors[name] = str(e)
  if len(fits) != 1:
    why = '; '.join(f'{name}: {error}' for name, error in errors.items())
    raise ValueError(f'{source}: the tensors under {prefix!r} fit {len(fits)} of the backbones {sorted(names)} '
                     f'{sorted(fits) if fits else ""}(need exactly one). {why}')
  return next(iter(fits.items()))


def _backbone_line(name: str, conversion: converters.Conversion) -> str:
  heads = conversion.heads_left_out
  return f'{name} under {conversion.prefix!r}' + (f', left out: {torch_convert.name_list(heads)}' if heads else '')


def _without(state_dict: torch_convert.StateDict, prefixes: tuple[str, ...]) -> torch_convert.StateDict:
  return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}


# abaw3_rnn_attn `AudioVisualNetwork`: TimeDistributed(AudioConvEncoder(Base)), TimeDistributed(VisualConvEncoder(cnn)).
KARAS_AUDIO, KARAS_VISUAL = 'audio_network.model.model.', 'visual_network.model.model.'


def karas_lstm(state_dict: torch_convert.StateDict, source: str) -> SystemConversion:
  """abaw3_rnn_attn `AudioVisualRecurrentModel` (temporal model `rnn` / `birnn`), saved by its trainer as
  {'state_dict': ..., 'optim_dict': ...}: the backbones under `audio_network.model.model.` (End2You `Base`) and
  `visual_network.model.model.` (MobileFaceNet, InceptionResnetV1 or a VGGFace2 net), `seq2seq_model` =
  Sequential(ConcatFusion, Linear(D -> d), activation, RNNModel{rnn: LSTM}), the heads `linear_continuous`
  (2 x bins) and `linear_categorical` (24). The activation is GELU: the upstream factory never forwards another
  (spec rnn_attn bug 3); visual inputs are normalised as for a pretrained backbone (the study's setting)."""
  audio_name, audio = _backbone(state_dict, AUDIO_BACKBONES, KARAS_AUDIO, source)
  visual_name, visual = _backbone(state_dict, VISUAL_BACKBONES, KARAS_VISUAL, source)
  rest = torch_convert.StateDictReader(_without(state_dict, (KARAS_AUDIO, KARAS_VISUAL)), source)
  project = rest.dense('seq2seq_model.1')
  lstm = temporal.from_torch(rest, 'seq2seq_model.3.rnn.')['params']
  va, cat = rest.dense('linear_continuous'), rest.dense('linear_categorical')
  rest.check_all_used()
  model = dict(visual_backbone=visual_name, audio_backbone=audio_name, modalities=('audio', 'visual'), act='gelu',
               d_embedding=project['kernel'].shape[1], num_layers=len([k for k in lstm if k.startswith('w_ih_l')]),
               bidirectional=lstm['w_ih_l0'].shape[0] == 2, num_bins=va['bias'].shape[0] // 2,
               aux_classes=cat['bias'].shape[0])
  params = dict(audio=audio.variables['params'], visual=visual.variables['params'],
                fusion={'project': project, 'lstm': lstm}, va={'dense': va}, cat=cat)
  stats = dict(audio=audio.variables['batch_stats'], visual=visual.variables['batch_stats'])
  compat = dict(vggface2_rgb01_norm=visual_name.startswith('vggface2'))  # spec rnn_attn bug 7
  report = '\n'.join(_backbone_line(name, c) for name, c in ((audio_name, audio), (visual_name, visual)))
  return SystemConversion('lstm', model, compat, {'params': params, 'batch_stats': stats}, report)


SYSTEMS: dict[str, tuple[Callable[[torch_convert.StateDict, str], SystemConversion], str]] = {
    'lstm': (karas_lstm, 'abaw3_rnn_attn `AudioVisualRecurrentModel` (rnn / birnn), its trainer\'s '
                         '{"state_dict": ..., "optim_dict": ...}'),
}


def convert_system(system: str, state_dict: torch_convert.StateDict, source: str = 'checkpoint') -> SystemConversion:
  if system not in SYSTEMS:
    raise ValueError(f'no whole-model converter for {system!r}; known: {sorted(SYSTEMS)}')
  return SYSTEMS[system][0](state_dict, source)
