"""abaw3_rnn_attn's whole models (`AudioVisualRecurrentModel`, `AudioVisualAttentionNetwork`) -> the Karas et al.
systems' variables (`affjax.systems.converters`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from affjax.models import attention, temporal, torch_convert
from affjax.systems import converters
from affjax.systems.audio_visual.model import AUDIO_BACKBONES, VISUAL_BACKBONES
from affjax.systems.converters import Options, SystemConversion

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
  audio_name, audio = converters.backbone(state_dict, AUDIO_BACKBONES, KARAS_AUDIO, source)
  visual_name, visual = converters.backbone(state_dict, VISUAL_BACKBONES, KARAS_VISUAL, source)
  rest = torch_convert.StateDictReader(converters.without(state_dict, (KARAS_AUDIO, KARAS_VISUAL)), source)
  fusion_params, model, compat = fusion(rest)
  va, cat = rest.dense('linear_continuous'), rest.dense('linear_categorical')
  rest.check_all_used(ignore=KARAS_PE_BUFFERS)
  model.update(visual_backbone=visual_name, audio_backbone=audio_name, modalities=('audio', 'visual'), act='gelu',
               num_bins=va['bias'].shape[0] // 2, aux_classes=cat['bias'].shape[0])
  params = dict(audio=audio.variables['params'], visual=visual.variables['params'], fusion=fusion_params,
                va={'dense': va}, cat=cat)
  stats = dict(audio=audio.variables['batch_stats'], visual=visual.variables['batch_stats'])
  compat['vggface2_rgb01_norm'] = visual_name.startswith('vggface2')  # spec rnn_attn bug 7
  report = '\n'.join(converters.backbone_line(name, c) for name, c in ((audio_name, audio), (visual_name, visual)))
  return SystemConversion(config, model, {}, compat, {'params': params, 'batch_stats': stats}, report)


def _encoder_layer(sd: torch_convert.StateDictReader, prefix: str, num_heads: int, torch_layer: bool) -> dict:
  """A post-LN self-attention layer: `nn.TransformerEncoderLayer` (`torch_layer`) or abaw3_rnn_attn's
  `SelfattentionLayer` {mha, ffn.ffn.{0,3}, layernorm_mha, layernorm_ffn}."""
  names = (('self_attn.', 'linear1', 'linear2', 'norm1', 'norm2') if torch_layer else
           ('mha.', 'ffn.ffn.0', 'ffn.ffn.3', 'layernorm_mha', 'layernorm_ffn'))
  attn, ffn_in, ffn_out, norm_attn, norm_ffn = names
  return {'attn': attention.from_torch(sd, num_heads, prefix + attn),
          'norm_attn': converters.layer_norm(sd, prefix + norm_attn),
          'ffn_in': sd.dense(prefix + ffn_in), 'ffn_out': sd.dense(prefix + ffn_out),
          'norm_ffn': converters.layer_norm(sd, prefix + norm_ffn)}


def _cross_layer(sd: torch_convert.StateDictReader, prefix: str, num_heads: int) -> dict:
  """`CrossModalAttentionLayerV2` {mha, ffn.ffn.{0,3}, layernorm_{src,tgt,ffn}} (+ `alpha`: the gated layer)."""
  params = {'attn': attention.from_torch(sd, num_heads, prefix + 'mha.'), 'ffn_in': sd.dense(prefix + 'ffn.ffn.0'),
            'ffn_out': sd.dense(prefix + 'ffn.ffn.3'),
            **{f'norm_{n}': converters.layer_norm(sd, f'{prefix}layernorm_{n}') for n in ('src', 'tgt', 'ffn')}}
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
    model = dict(d_embedding=project['kernel'].shape[1],
                 num_layers=converters.count(sd, 'seq2seq_model.3.rnn.weight_ih_l{}'),
                 bidirectional=lstm['w_ih_l0'].shape[0] == 2)
    return {'project': project, 'lstm': lstm}, model, {}

  return _karas(state_dict, source, 'lstm', fusion)


def karas_self_attn(state_dict: torch_convert.StateDict, source: str, options: Options) -> SystemConversion:
  """abaw3_rnn_attn `AudioVisualAttentionNetwork` (`selfattn`): `seq2seq_model` = Sequential(ConcatFusion,
  SelfAttentionModel{linear, pos_encoder.pe, transformer_encoder.layers.<i>: nn.TransformerEncoderLayer})."""

  def fusion(sd):
    p = 'seq2seq_model.1.'
    n = converters.count(sd, p + 'transformer_encoder.layers.{}.linear1.weight')
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
      counts[ours] = converters.count(sd, f'{p}{theirs}.layers.{{}}.mha.in_proj_weight')
      for i in range(counts[ours]):
        params[f'{ours}_{i}'] = _cross_layer(sd, f'{p}{theirs}.layers.{i}.', options.num_heads)
    n = converters.count(sd, p + 'selfattn.layers.{}.mha.in_proj_weight')
    for i in range(n):
      params[f'self_{i}'] = _encoder_layer(sd, f'{p}selfattn.layers.{i}.', options.num_heads, False)
    model = dict(d_embedding=2 * params['audio_in']['conv']['kernel'].shape[-1],
                 d_ff=params['self_0']['ffn_in']['kernel'].shape[1], num_heads=options.num_heads, n_ca=counts['a2v'],
                 n_cv=counts['v2a'], num_layers=n, gated='alpha' in params['a2v_0'])
    return params, model, {'multv2_reference_layers': True}

  return _karas(state_dict, source, 'cross_attn', fusion)


_FILE = 'its trainer\'s {"state_dict": ..., "optim_dict": ...} or the search\'s {"model_state": ...}'
UPSTREAM = {
    'lstm': (karas_lstm, f'abaw3_rnn_attn `AudioVisualRecurrentModel` (rnn / birnn), {_FILE}'),
    'self_attn': (karas_self_attn, f'abaw3_rnn_attn `AudioVisualAttentionNetwork` (selfattn), {_FILE}'),
    'cross_attn': (karas_cross_attn, f'abaw3_rnn_attn `AudioVisualAttentionNetwork` (multv2 / gatedmultv2), {_FILE}'),
}
