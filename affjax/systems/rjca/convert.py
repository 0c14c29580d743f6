"""RecurrentJointAttentionwithLSTMs' fusion `CAM` with its TSAV backbones -> the rjca system's variables
(`affjax.systems.converters`)."""
from __future__ import annotations

from affjax.models import converters as backbone_converters, temporal, torch_convert
from affjax.systems import converters
from affjax.systems.converters import Options, SystemConversion


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
  visual = backbone_converters.convert_state_dict('r2plus1d_18', state_dict, source, 'video_model.r2plus1d.')
  audio = backbone_converters.convert_state_dict('resnet18_audio', state_dict, source, 'audio_model.resnet.')
  backbones = ('video_model.r2plus1d.', 'audio_model.resnet.')
  rest = torch_convert.StateDictReader(converters.without(state_dict, backbones), source)
  without_bias = ('affine_v', 'affine_g', 'affine_h')
  spatial = {name: rest.dense(f'video_attn.attn.{name}', bias=name not in without_bias)
             for name in ('affine_video', 'affine_audio', *without_bias, 'affine_feat')}
  coattention = {}
  for r in range(converters.count(rest, 'coattn.dcn_layers.{}.dense_coattn.query_linear.weight')):
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
  report = '\n'.join([converters.backbone_line('r2plus1d_18', visual),
                      converters.backbone_line('resnet18_audio', audio),
                      'left out: fc (TSAV\'s joint head)'])
  return SystemConversion(
      'rjca', model, dict(num_clips=clips_per_window, image_size=112),
      {'scrambled_spatial_view': True, 'audio_guidance_on_position_axis': True},
      {'params': dict(visual=visual.variables['params'], audio=audio.variables['params'], fusion=fusion),
       'batch_stats': dict(visual=visual.variables['batch_stats'], audio=audio.variables['batch_stats'])}, report)


UPSTREAM = {'rjca': (rjca, 'RecurrentJointAttentionwithLSTMs `CAM` ({"net": ...}) with the TSAV backbones '
                           '({"state_dict": ...}): --checkpoint=TSAV.pth.tar,cam.pt')}
