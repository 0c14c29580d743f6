"""Whole upstream PyTorch models -> an affjax system's variables and the config fields they fix
(`tools/convert_torch.py --network=<system> --checkpoint=... --out_workdir=RUN`; `affjax.converted_run` writes
the run directory).

Each converter reads the state dict with the upstream model's own names; its backbones go through the
`converters` of `tools/convert_torch.py --network=<backbone>`, recognised by which of them fits.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from affjax.models import attention, converters, tcn, temporal, torch_convert
from affjax.models.audio import mfcc
from affjax.models.backbones import ir50
from affjax.systems.audio_visual.model import AUDIO_BACKBONES, VISUAL_BACKBONES


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


def _backbone(state_dict: torch_convert.StateDict, names: Iterable[str], prefix: str,
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


def _backbone_line(name: str, conversion: converters.Conversion) -> str:
  heads = conversion.heads_left_out
  return f'{name} under {conversion.prefix!r}' + (f', left out: {torch_convert.name_list(heads)}' if heads else '')


def _without(state_dict: torch_convert.StateDict, prefixes: tuple[str, ...]) -> torch_convert.StateDict:
  return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}


# abaw3_rnn_attn `AudioVisualNetwork`: TimeDistributed(AudioConvEncoder(Base)), TimeDistributed(VisualConvEncoder(cnn)).
KARAS_AUDIO, KARAS_VISUAL = 'audio_network.model.model.', 'visual_network.model.model.'
# The positional-encoding tables its attention models save as buffers: fixed sinusoids, which affjax computes.
KARAS_PE_BUFFERS = ('seq2seq_model.1.pos_encoder.pe', 'seq2seq_model.pe_audio.pe', 'seq2seq_model.pe_visual.pe')


def _karas(state_dict: torch_convert.StateDict, source: str, config: str,
           fusion: Callable[[torch_convert.StateDictReader], tuple[dict, dict[str, Any], dict[str, bool]]]
           ) -> SystemConversion:
  """An abaw3_rnn_attn `AudioVisualNetwork` subclass: the backbones, `fusion(reader)` -> (fusion params, model
  fields, compat flags) for `seq2seq_model`, and the heads `linear_continuous` (2 x bins) and
  `linear_categorical` (24). Visual inputs are normalised as for a pretrained backbone (the study's setting)."""
  audio_name, audio = _backbone(state_dict, AUDIO_BACKBONES, KARAS_AUDIO, source)
  visual_name, visual = _backbone(state_dict, VISUAL_BACKBONES, KARAS_VISUAL, source)
  rest = torch_convert.StateDictReader(_without(state_dict, (KARAS_AUDIO, KARAS_VISUAL)), source)
  fusion_params, model, compat = fusion(rest)
  va, cat = rest.dense('linear_continuous'), rest.dense('linear_categorical')
  rest.check_all_used(ignore=KARAS_PE_BUFFERS)
  model.update(visual_backbone=visual_name, audio_backbone=audio_name, modalities=('audio', 'visual'), act='gelu',
               num_bins=va['bias'].shape[0] // 2, aux_classes=cat['bias'].shape[0])
  params = dict(audio=audio.variables['params'], visual=visual.variables['params'], fusion=fusion_params,
                va={'dense': va}, cat=cat)
  stats = dict(audio=audio.variables['batch_stats'], visual=visual.variables['batch_stats'])
  compat['vggface2_rgb01_norm'] = visual_name.startswith('vggface2')  # spec rnn_attn bug 7
  report = '\n'.join(_backbone_line(name, c) for name, c in ((audio_name, audio), (visual_name, visual)))
  return SystemConversion(config, model, {}, compat, {'params': params, 'batch_stats': stats}, report)


def _count(sd: torch_convert.StateDictReader, pattern: str) -> int:
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def _layer_norm(sd: torch_convert.StateDictReader, prefix: str) -> dict:
  return {'scale': sd[f'{prefix}.weight'], 'bias': sd[f'{prefix}.bias']}


def _encoder_layer(sd: torch_convert.StateDictReader, prefix: str, num_heads: int, torch_layer: bool) -> dict:
  """A post-LN self-attention layer: `nn.TransformerEncoderLayer` (`torch_layer`) or abaw3_rnn_attn's
  `SelfattentionLayer` {mha, ffn.ffn.{0,3}, layernorm_mha, layernorm_ffn}."""
  names = (('self_attn.', 'linear1', 'linear2', 'norm1', 'norm2') if torch_layer else
           ('mha.', 'ffn.ffn.0', 'ffn.ffn.3', 'layernorm_mha', 'layernorm_ffn'))
  attn, ffn_in, ffn_out, norm_attn, norm_ffn = names
  return {'attn': attention.from_torch(sd, num_heads, prefix + attn), 'norm_attn': _layer_norm(sd, prefix + norm_attn),
          'ffn_in': sd.dense(prefix + ffn_in), 'ffn_out': sd.dense(prefix + ffn_out),
          'norm_ffn': _layer_norm(sd, prefix + norm_ffn)}


def _cross_layer(sd: torch_convert.StateDictReader, prefix: str, num_heads: int) -> dict:
  """`CrossModalAttentionLayerV2` {mha, ffn.ffn.{0,3}, layernorm_{src,tgt,ffn}} (+ `alpha`: the gated layer)."""
  params = {'attn': attention.from_torch(sd, num_heads, prefix + 'mha.'), 'ffn_in': sd.dense(prefix + 'ffn.ffn.0'),
            'ffn_out': sd.dense(prefix + 'ffn.ffn.3'),
            **{f'norm_{n}': _layer_norm(sd, f'{prefix}layernorm_{n}') for n in ('src', 'tgt', 'ffn')}}
  if prefix + 'alpha' in sd:
    params['alpha'] = sd[prefix + 'alpha'].reshape(())
  return params


def karas_lstm(state_dict: torch_convert.StateDict, source: str, options: Options) -> SystemConversion:
  """abaw3_rnn_attn `AudioVisualRecurrentModel` (`rnn` / `birnn`): `seq2seq_model` = Sequential(ConcatFusion,
  Linear(D -> d), activation, RNNModel{rnn: LSTM}). The activation is GELU: the upstream factory never forwards
  another (spec rnn_attn bug 3)."""
  del options

  def fusion(sd):
    project, lstm = sd.dense('seq2seq_model.1'), temporal.from_torch(sd, 'seq2seq_model.3.rnn.')['params']
    model = dict(d_embedding=project['kernel'].shape[1], num_layers=_count(sd, 'seq2seq_model.3.rnn.weight_ih_l{}'),
                 bidirectional=lstm['w_ih_l0'].shape[0] == 2)
    return {'project': project, 'lstm': lstm}, model, {}

  return _karas(state_dict, source, 'lstm', fusion)


def karas_self_attn(state_dict: torch_convert.StateDict, source: str, options: Options) -> SystemConversion:
  """abaw3_rnn_attn `AudioVisualAttentionNetwork` (`selfattn`): `seq2seq_model` = Sequential(ConcatFusion,
  SelfAttentionModel{linear, pos_encoder.pe, transformer_encoder.layers.<i>: nn.TransformerEncoderLayer})."""

  def fusion(sd):
    p = 'seq2seq_model.1.'
    n = _count(sd, p + 'transformer_encoder.layers.{}.linear1.weight')
    params = {'project': sd.dense(p + 'linear'),
              **{f'self_{i}': _encoder_layer(sd, f'{p}transformer_encoder.layers.{i}.', options.num_heads, True)
                 for i in range(n)}}
    model = dict(d_embedding=params['project']['kernel'].shape[1], d_ff=params['self_0']['ffn_in']['kernel'].shape[1],
                 num_heads=options.num_heads, num_layers=n)
    return params, model, {}

  return _karas(state_dict, source, 'self_attn', fusion)


def karas_cross_attn(state_dict: torch_convert.StateDict, source: str, options: Options) -> SystemConversion:
  """abaw3_rnn_attn `AudioVisualAttentionNetwork` (`multv2` / `gatedmultv2`): `seq2seq_model` = MulTV2 {conv_audio,
  conv_visual, pe_audio.pe, pe_visual.pe, cross_audio_visual.layers.<i> (A->V), cross_visual_audio.layers.<i>
  (V->A), selfattn.layers.<i>: SelfattentionLayer}. Its cross-modal layers are the reference's (spec rnn_attn bug
  2), so the run sets `compat.multv2_reference_layers`."""

  def fusion(sd):
    p = 'seq2seq_model.'
    params = {'audio_in': {'conv': sd.conv(p + 'conv_audio', bias=True)},
              'visual_in': {'conv': sd.conv(p + 'conv_visual', bias=True)}}
    counts = {}
    for ours, theirs in (('a2v', 'cross_audio_visual'), ('v2a', 'cross_visual_audio')):
      counts[ours] = _count(sd, f'{p}{theirs}.layers.{{}}.mha.in_proj_weight')
      for i in range(counts[ours]):
        params[f'{ours}_{i}'] = _cross_layer(sd, f'{p}{theirs}.layers.{i}.', options.num_heads)
    n = _count(sd, p + 'selfattn.layers.{}.mha.in_proj_weight')
    for i in range(n):
      params[f'self_{i}'] = _encoder_layer(sd, f'{p}selfattn.layers.{i}.', options.num_heads, False)
    model = dict(d_embedding=2 * params['audio_in']['conv']['kernel'].shape[-1],
                 d_ff=params['self_0']['ffn_in']['kernel'].shape[1], num_heads=options.num_heads, n_ca=counts['a2v'],
                 n_cv=counts['v2a'], num_layers=n, gated='alpha' in params['a2v_0'])
    return params, model, {'multv2_reference_layers': True}

  return _karas(state_dict, source, 'cross_attn', fusion)


def lfan(state_dict: torch_convert.StateDict, source: str, options: Options) -> SystemConversion:
  """ABAW2 `my_2d1ddy` (LFAN), saved by its trainer as a bare state dict (`model_state_dict.pth`): `spatial` (the
  IR-50 `Backbone`), the TCNs `temporal` (visual), `temporal1` (VGGish), `temporal2` (MFCC), the fusion's
  `encoder{1,2,3}`, `encoderQ{1,2,3}`, `encoderV{1,2,3}`, `ln`, and `regressor` (one output: the emotion given in
  `options`; two: both). `gn1`, `gn2` are unused by its forward and left out. Its forward computes the followers'
  queries and values from their keys (spec lfan bug 2): the run sets `compat.follower_qv_from_key`."""
  visual = converters.convert_state_dict('ir50', state_dict, source, 'spatial.')
  rest = torch_convert.StateDictReader(_without(state_dict, ('spatial.',)), source)
  tcns = {name: tcn.from_torch(rest, f'{theirs}.')['params']
          for name, theirs in (('visual_tcn', 'temporal'), ('vggish_tcn', 'temporal1'), ('mfcc_tcn', 'temporal2'))}
  inputs = {name: tcns[name]['level0']['conv1']['v'].shape[1] for name in ('vggish_tcn', 'mfcc_tcn')}
  if inputs != {'vggish_tcn': 128, 'mfcc_tcn': mfcc.MFCC_DIM}:
    raise ValueError(f'{source}: temporal1 / temporal2 take {inputs["vggish_tcn"]} / {inputs["mfcc_tcn"]} features, '
                     f'not VGGish (128) / MFCC ({mfcc.MFCC_DIM}): not the paper\'s followers')
  fusion = {f'{ours}{m}': rest.dense(f'{theirs}{m + 1}') for m in range(3)
            for ours, theirs in (('key', 'encoder'), ('query', 'encoderQ'), ('value', 'encoderV'))}
  fusion['norm'] = _layer_norm(rest, 'ln')
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
  report = _backbone_line('ir50', visual) + '\nleft out (unused by its forward): gn1, gn2'
  return SystemConversion('lfan', model, dict(crop_size=8 * side, image_size=48 * side // 5),
                          {'follower_qv_from_key': True},
                          {'params': params, 'batch_stats': {'visual': visual.variables['batch_stats']}}, report)


def _rjca_blstm(sd: torch_convert.StateDictReader, prefix: str) -> dict:
  """RJCA's `LSTM` block (`models/layer.py`): {rnn (2-layer bidirectional nn.LSTM), init_hidden [h0 rows; c0 rows],
  linear}; its `init_hidden` rows are affjax's `initial_state` rows (h0 then c0, row 2 layer + direction)."""
  lstm = temporal.from_torch(sd, f'{prefix}.rnn.')['params']
  lstm['initial_state'] = sd[f'{prefix}.init_hidden']
  return {'lstm': lstm, 'linear': sd.dense(f'{prefix}.linear')}


def rjca(state_dict: torch_convert.StateDict, source: str, options: Options) -> SystemConversion:
  """RecurrentJointAttentionwithLSTMs: its fusion `CAM` (saved by `main.py` as {'net': ..., 'best_Val_acc...'}:
  `audio_extract`, `video_attn.attn.affine_*`, `video_extract`, `coattn.dcn_layers.<r>` {dense_coattn: query_linear,
  key{1,2}_linear, value{1,2}_linear; linears.{0,1}.0}, `Joint`, `vregressor`, `aregressor`) together with the TSAV
  backbones it runs on ({'state_dict': ...}: `audio_model.resnet.`, `video_model.r2plus1d.`; the joint `fc` head is
  left out): give both files (`--checkpoint=TSAV.pth.tar,cam.pt`). The released fusion saw TSAV's channel-major
  [49, 512] view and the audio guidance on the position axis (spec B2, B3): the run sets both compat flags."""
  del options
  visual = converters.convert_state_dict('r2plus1d_18', state_dict, source, 'video_model.r2plus1d.')
  audio = converters.convert_state_dict('resnet18_audio', state_dict, source, 'audio_model.resnet.')
  rest = torch_convert.StateDictReader(_without(state_dict, ('video_model.r2plus1d.', 'audio_model.resnet.')), source)
  without_bias = ('affine_v', 'affine_g', 'affine_h')
  spatial = {name: rest.dense(f'video_attn.attn.{name}', bias=name not in without_bias)
             for name in ('affine_video', 'affine_audio', *without_bias, 'affine_feat')}
  coattention = {}
  for r in range(_count(rest, 'coattn.dcn_layers.{}.dense_coattn.query_linear.weight')):
    layer = f'coattn.dcn_layers.{r}'
    coattention[f'iteration{r}'] = {
        'query': rest.dense(f'{layer}.dense_coattn.query_linear'),
        **{f'{kind}_{name}': rest.dense(f'{layer}.dense_coattn.{kind}{m}_linear') for kind in ('key', 'value')
           for m, name in ((1, 'visual'), (2, 'audio'))},  # coattn(video, audio): data1 is the video
        'out_visual': rest.dense(f'{layer}.linears.0.0'), 'out_audio': rest.dense(f'{layer}.linears.1.0')}
  fusion = {'audio_blstm': _rjca_blstm(rest, 'audio_extract'), 'spatial_attention': spatial,
            'visual_blstm': _rjca_blstm(rest, 'video_extract'), 'coattention': coattention,
            'joint_blstm': _rjca_blstm(rest, 'Joint')}
  for name, theirs in (('valence', 'vregressor'), ('arousal', 'aregressor')):
    fusion[f'{name}_hidden'], fusion[f'{name}_out'] = rest.dense(f'{theirs}.0'), rest.dense(f'{theirs}.3')
  rest.check_all_used(ignore=('fc.',))
  clips_per_window = coattention['iteration0']['key_visual']['kernel'].shape[0]
  model = dict(num_iterations=len(coattention), share_iteration_weights=False,
               features=fusion['audio_blstm']['linear']['kernel'].shape[1])
  report = '\n'.join([_backbone_line('r2plus1d_18', visual), _backbone_line('resnet18_audio', audio),
                      'left out: fc (TSAV\'s joint head)'])
  return SystemConversion(
      'rjca', model, dict(num_clips=clips_per_window, image_size=112),
      {'scrambled_spatial_view': True, 'audio_guidance_on_position_axis': True},
      {'params': dict(visual=visual.variables['params'], audio=audio.variables['params'], fusion=fusion),
       'batch_stats': dict(visual=visual.variables['batch_stats'], audio=audio.variables['batch_stats'])}, report)


_KARAS_FILE = 'its trainer\'s {"state_dict": ..., "optim_dict": ...} or the search\'s {"model_state": ...}'
SYSTEMS: dict[str, tuple[Callable[[torch_convert.StateDict, str, Options], SystemConversion], str]] = {
    'lstm': (karas_lstm, f'abaw3_rnn_attn `AudioVisualRecurrentModel` (rnn / birnn), {_KARAS_FILE}'),
    'self_attn': (karas_self_attn, f'abaw3_rnn_attn `AudioVisualAttentionNetwork` (selfattn), {_KARAS_FILE}'),
    'cross_attn': (karas_cross_attn,
                   f'abaw3_rnn_attn `AudioVisualAttentionNetwork` (multv2 / gatedmultv2), {_KARAS_FILE}'),
    'lfan': (lfan, 'ABAW2 `my_2d1ddy`, its trainer\'s bare state dict (one output: give --emotion)'),
    'rjca': (rjca, 'RecurrentJointAttentionwithLSTMs `CAM` ({"net": ...}) with the TSAV backbones '
                   '({"state_dict": ...}): --checkpoint=TSAV.pth.tar,cam.pt'),
}


def convert_system(system: str, state_dict: torch_convert.StateDict, source: str = 'checkpoint',
                   options: Options = Options()) -> SystemConversion:
  """`system`'s conversion of an upstream whole-model state dict; raises ValueError naming the first missing
  tensor, or those left unread, when the checkpoint is not of that model."""
  if system not in SYSTEMS:
    raise ValueError(f'no whole-model converter for {system!r}; known: {sorted(SYSTEMS)}')
  convert, upstream = SYSTEMS[system]
  try:
    return convert(state_dict, source, options)
  except torch_convert.MissingTensor as e:
    raise ValueError(f'not a checkpoint of {upstream}: {e}') from None
