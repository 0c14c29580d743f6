"""ABAW2's whole LFAN model (`my_2d1ddy`) -> the lfan system's variables (`affjax.systems.converters`)."""
from __future__ import annotations

from affjax.models import converters as backbone_converters, tcn, torch_convert
from affjax.models.audio import mfcc
from affjax.models.backbones import ir50
from affjax.systems import converters
from affjax.systems.converters import Options, SystemConversion


def lfan(state_dict: torch_convert.StateDict, source: str, options: Options) -> SystemConversion:
  """ABAW2 `my_2d1ddy` (LFAN), saved by its trainer as a bare state dict (`model_state_dict.pth`): `spatial` (the
  IR-50 `Backbone`), the TCNs `temporal` (visual), `temporal1` (VGGish), `temporal2` (MFCC), the fusion's
  `encoder{1,2,3}`, `encoderQ{1,2,3}`, `encoderV{1,2,3}`, `ln`, and `regressor` (one output: the emotion given in
  `options`; two: both). `gn1`, `gn2` are unused by its forward and left out. Its forward computes the followers'
  queries and values from their keys (spec lfan bug 2): the run sets `compat.follower_qv_from_key`."""
  visual = backbone_converters.convert_state_dict('ir50', state_dict, source, 'spatial.')
  rest = torch_convert.StateDictReader(converters.without(state_dict, ('spatial.',)), source)
  tcns = {name: tcn.from_torch(rest, f'{theirs}.')['params']
          for name, theirs in (('visual_tcn', 'temporal'), ('vggish_tcn', 'temporal1'), ('mfcc_tcn', 'temporal2'))}
  inputs = {name: tcns[name]['level0']['conv1']['v'].shape[1] for name in ('vggish_tcn', 'mfcc_tcn')}
  if inputs != {'vggish_tcn': 128, 'mfcc_tcn': mfcc.MFCC_DIM}:
    raise ValueError(f'{source}: temporal1 / temporal2 take {inputs["vggish_tcn"]} / {inputs["mfcc_tcn"]} features, '
                     f'not VGGish (128) / MFCC ({mfcc.MFCC_DIM}): not the paper\'s followers')
  fusion = {f'{ours}{m}': rest.dense(f'{theirs}{m + 1}') for m in range(3)
            for ours, theirs in (('key', 'encoder'), ('query', 'encoderQ'), ('value', 'encoderV'))}
  fusion['norm'] = converters.layer_norm(rest, 'ln')
  regressor = rest.dense('regressor')
  rest.check_all_used(ignore=('gn1.', 'gn2.'))
  outputs = regressor['bias'].shape[0]
  if outputs == 1 and options.emotion not in ('valence', 'arousal'):
    raise ValueError(f'{source}: the regressor has one output (one model per emotion): give --emotion=valence or '
                     '--emotion=arousal')
  widths = lambda net: tuple(net[f'level{i}']['conv1']['bias'].shape[0] for i in range(len(net)))
  units = [0] * len(ir50.WIDTHS)
  for unit in (v for k, v in visual.variables['params'].items() if k.startswith('unit')):
    units[ir50.WIDTHS.index(unit['conv2']['kernel'].shape[-1])] += 1
  side = int(round((visual.variables['params']['head_dense']['kernel'].shape[0] // ir50.WIDTHS[-1]) ** 0.5))
  model = dict(followers=('vggish', 'mfcc'), visual_channels=widths(tcns['visual_tcn']),
               follower_channels=widths(tcns['vggish_tcn']),
               kernel_size=tcns['visual_tcn']['level0']['conv1']['v'].shape[0],
               fusion_dim=fusion['key0']['kernel'].shape[1], ir50_units=tuple(units),
               emotion='both' if outputs == 2 else options.emotion)
  params = dict(visual=visual.variables['params'], **tcns, fusion=fusion, regressor=regressor)
  report = converters.backbone_line('ir50', visual) + '\nleft out (unused by its forward): gn1, gn2'
  return SystemConversion('lfan', model, dict(crop_size=8 * side, image_size=48 * side // 5),
                          {'follower_qv_from_key': True},
                          {'params': params, 'batch_stats': {'visual': visual.variables['batch_stats']}}, report)


UPSTREAM = {'lfan': (lfan, 'ABAW2 `my_2d1ddy`, its trainer\'s bare state dict (one output: give --emotion)')}
