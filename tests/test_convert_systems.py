"""Whole upstream models -> affjax run directories (`tools/convert_torch.py --network=<system> --out_workdir=RUN`):
references written with the upstream models' names and nesting on random weights, saved as their trainers save
them, converted through the CLI's function; the restored run's outputs against the reference, and `--mode=eval`
on the run."""
import functools
import sys

import jax
import numpy as np
import pytest

from affjax import checkpoint, converted_run, parallel, systems
from affjax.data import prepare, records as records_lib
from affjax.models.audio import mfcc as mfcc_lib
from affjax.models.audio.frame_windows import slice_audio_windows
from affjax.models.backbones.audio1d import AUDIO_CNN_TABLES
from affjax.systems import converters as system_converters
from affjax.train import loop, optim, state as state_lib

import torch_checkpoints

torch = pytest.importorskip('torch')
tnn = torch.nn


def _time_distributed(module):
  """abaw3_rnn_attn's `TimeDistributed` / encoder wrappers: the wrapped module under `.model`."""
  wrapper = tnn.Module()
  wrapper.model = module
  return wrapper


class _PositionalEncoding(tnn.Module):
  """abaw3_rnn_attn `PositionalEncoding`: the sinusoid table saved as the buffer `pe` [1, 5000, d]."""

  def __init__(self, d: int):
    super().__init__()
    position, freq = torch.arange(5000.0)[:, None], torch.exp(torch.arange(0, d, 2.0) * (-np.log(10000.0) / d))
    pe = torch.zeros(5000, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
    self.register_buffer('pe', pe[None])

  def forward(self, x):
    return x + self.pe[:, :x.shape[1]]


def _ffn(d: int, d_ff: int):
  """`PointWiseFeedForward`: `ffn` = Sequential(Linear, GELU, Dropout, Linear)."""
  ffn = tnn.Module()
  ffn.ffn = tnn.Sequential(tnn.Linear(d, d_ff), tnn.GELU(), tnn.Dropout(0.3), tnn.Linear(d_ff, d))
  return ffn


class _SelfattentionLayer(tnn.Module):
  """abaw3_rnn_attn `SelfattentionLayer`, post-LN: {mha, ffn, layernorm_mha, layernorm_ffn}."""

  def __init__(self, d: int, d_ff: int, heads: int):
    super().__init__()
    self.mha, self.ffn = tnn.MultiheadAttention(d, heads, batch_first=True), _ffn(d, d_ff)
    self.layernorm_mha, self.layernorm_ffn = tnn.LayerNorm(d), tnn.LayerNorm(d)

  def forward(self, x):
    x = self.layernorm_mha(x + self.mha(x, x, x)[0])
    return self.layernorm_ffn(x + self.ffn.ffn(x))


class _CrossModalAttentionLayerV2(tnn.Module):
  """abaw3_rnn_attn `CrossModalAttentionLayerV2` as it is (spec rnn_attn bug 2: `out_1 = Drop(a) + a`), with the
  gated variant's `alpha`: {mha, ffn, layernorm_src, layernorm_tgt, layernorm_ffn[, alpha]}."""

  def __init__(self, d: int, d_ff: int, heads: int, gated: bool):
    super().__init__()
    self.mha, self.ffn = tnn.MultiheadAttention(d, heads, batch_first=True), _ffn(d, d_ff)
    self.layernorm_src, self.layernorm_tgt, self.layernorm_ffn = tnn.LayerNorm(d), tnn.LayerNorm(d), tnn.LayerNorm(d)
    if gated:
      self.alpha = tnn.Parameter(torch.tensor([0.3]))

  def forward(self, source, target):
    src, tgt = self.layernorm_src(source), self.layernorm_tgt(target)
    a = self.mha(tgt, src, src)[0]
    out_1 = self.alpha * a + (1 - self.alpha) * a if hasattr(self, 'alpha') else a + a
    return out_1 + torch.nn.functional.gelu(self.ffn.ffn(self.layernorm_ffn(out_1)))


class _MulTV2(tnn.Module):
  """abaw3_rnn_attn `MulTV2` / `GatedMulTV2`: every cross layer reads the front-end outputs (bug 2)."""

  def __init__(self, fa: int, fv: int, d: int, d_ff: int, heads: int, n_ca: int, n_cv: int, layers: int, gated: bool):
    super().__init__()
    self.conv_audio = tnn.Conv1d(fa, d // 2, 3, padding='same')
    self.conv_visual = tnn.Conv1d(fv, d // 2, 3, padding='same')
    self.pe_audio, self.pe_visual = _PositionalEncoding(d // 2), _PositionalEncoding(d // 2)
    for name, n in (('cross_audio_visual', n_ca), ('cross_visual_audio', n_cv)):
      stack = tnn.Module()
      stack.layers = tnn.ModuleList([_CrossModalAttentionLayerV2(d // 2, d_ff, heads, gated) for _ in range(n)])
      setattr(self, name, stack)
    self.selfattn = tnn.Module()
    self.selfattn.layers = tnn.ModuleList([_SelfattentionLayer(d, d_ff, heads) for _ in range(layers)])

  def forward(self, audio, visual):
    a = self.pe_audio(self.conv_audio(audio.permute(0, 2, 1)).permute(0, 2, 1))
    v = self.pe_visual(self.conv_visual(visual.permute(0, 2, 1)).permute(0, 2, 1))
    atov = [layer(a, v) for layer in self.cross_audio_visual.layers][-1]
    vtoa = [layer(v, a) for layer in self.cross_visual_audio.layers][-1]
    x = torch.cat([atov, vtoa], -1)
    for layer in self.selfattn.layers:
      x = layer(x)
    return torch.nn.functional.gelu(x)


class _SelfAttentionModel(tnn.Module):
  """abaw3_rnn_attn `SelfAttentionModel`: {linear, pos_encoder, transformer_encoder (nn.TransformerEncoder of
  post-LN nn.TransformerEncoderLayer, GELU)}."""

  def __init__(self, n_inputs: int, d: int, d_ff: int, heads: int, layers: int):
    super().__init__()
    self.linear, self.pos_encoder = tnn.Linear(n_inputs, d), _PositionalEncoding(d)
    layer = tnn.TransformerEncoderLayer(d, heads, d_ff, batch_first=True, activation='gelu')
    self.transformer_encoder = tnn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

  def forward(self, x):
    x = self.pos_encoder(torch.nn.functional.gelu(self.linear(x)))
    return torch.nn.functional.gelu(self.transformer_encoder(x))


class _RNNModel(tnn.Module):
  def __init__(self, d: int, layers: int, bidirectional: bool):
    super().__init__()
    self.rnn = tnn.LSTM(d, d, layers, batch_first=True, bidirectional=bidirectional)

  def forward(self, x):
    return self.rnn(x)[0]


class _KarasAV(tnn.Module):
  """abaw3_rnn_attn's `AudioVisualNetwork` subclasses: `audio_network` = TimeDistributed(AudioConvEncoder(Base)),
  `visual_network` = TimeDistributed(VisualConvEncoder(MobileFaceNet without its landmark head)), the
  temporal model `seq2seq_model` (`temporal`: 'rnn' | 'selfattn' | 'multv2' | 'gatedmultv2'), and the heads
  `linear_continuous`, `linear_categorical`."""

  def __init__(self, table, temporal: str, d: int, layers: int, heads: int = 2, d_ff: int = 12):
    super().__init__()
    self.audio_network = _time_distributed(_time_distributed(torch_checkpoints.end2you_base(torch, table)))
    mobilefacenet = torch_checkpoints.upstream_mobilefacenet(torch)
    mobilefacenet.output_layer.linear = mobilefacenet.output_layer.bn = tnn.Identity()  # remove_output_layer()
    self.visual_network = _time_distributed(_time_distributed(mobilefacenet))
    fa, width, self.temporal = table[-1].features, d, temporal
    if temporal in ('rnn', 'birnn'):
      self.seq2seq_model = tnn.Sequential(tnn.Identity(), tnn.Linear(fa + 512, d), tnn.GELU(),
                                          _RNNModel(d, layers, temporal == 'birnn'))
      width = d * (2 if temporal == 'birnn' else 1)
    elif temporal == 'selfattn':
      self.seq2seq_model = tnn.Sequential(tnn.Identity(), _SelfAttentionModel(fa + 512, d, d_ff, heads, layers))
    else:
      self.seq2seq_model = _MulTV2(fa, 512, d, d_ff, heads, 2, 1, layers, temporal == 'gatedmultv2')
    self.linear_continuous, self.linear_categorical = tnn.Linear(width, 2), tnn.Linear(width, 24)

  def forward(self, windows, faces):
    """windows [B, T, W], faces [B, T, 112, 112, 3] in [0, 1] -> (va [B, T, 2], cat [B, T, 24])."""
    b, t = windows.shape[:2]
    audio = self.audio_network.model.model(windows.reshape(b * t, 1, -1)).mean(-1).reshape(b, t, -1)
    visual = self.visual_network.model.model.features(faces.reshape(b * t, *faces.shape[2:]).permute(0, 3, 1, 2))
    visual = visual.reshape(b, t, -1)
    x = (self.seq2seq_model(audio, visual) if isinstance(self.seq2seq_model, _MulTV2)
         else self.seq2seq_model[1:](torch.cat([audio, visual], -1)))
    return self.linear_continuous(x), self.linear_categorical(x)


def _av_batch(config, batch_size: int, seed: int) -> dict[str, np.ndarray]:
  """A random batch shaped like the pipeline's, frame t's audio window starting ~533 samples after frame t-1's."""
  batch = state_lib.example_batch(config, batch_size)
  rng = np.random.default_rng(seed)
  t = batch['mask'].shape[1]
  batch['faces'] = rng.integers(0, 256, batch['faces'].shape, dtype=np.uint8)
  batch['audio'] = rng.uniform(-1, 1, batch['audio'].shape).astype(np.float32)
  batch['audio_offsets'][:] = np.round(np.arange(t) * 16000 / 30).astype(np.int32)
  return batch


def _restored_apply(config_path, arg: str = ''):
  """The model of the run's config with the variables its checkpoint holds, applied in evaluation mode."""
  config = converted_run.load_config(config_path, arg)
  model = systems.build_model(config.model, config.compat)
  tx = optim.make_optimizer(config, systems.param_labels(config.model))
  abstract = state_lib.initial_state(model, tx, config, parallel.make_mesh(), seed=config.seed + 1)
  checkpoints = checkpoint.Checkpointer(config_path.parent)
  try:
    state = checkpoints.restore(checkpoints.latest_step(), abstract)
  finally:
    checkpoints.close()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return config, jax.jit(functools.partial(model.apply, variables, train=False))


def _randomise_layer_norms(net):
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, tnn.LayerNorm):
        m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
  return net


@pytest.mark.parametrize('system, temporal, model_fields', [
    ('lstm', 'birnn', dict(d_embedding=8, num_layers=2, bidirectional=True)),
    ('self_attn', 'selfattn', dict(d_embedding=8, num_layers=2, d_ff=12, num_heads=2)),
    ('cross_attn', 'multv2', dict(d_embedding=16, num_layers=1, d_ff=12, num_heads=2, n_ca=2, n_cv=1, gated=False)),
    ('cross_attn', 'gatedmultv2', dict(d_embedding=16, num_layers=1, d_ff=12, num_heads=2, n_ca=2, n_cv=1, gated=True)),
])
def test_karas_models_convert_into_runs_that_match_the_upstream_model(tiny_tree, tmp_path, system, temporal,
                                                                      model_fields):
  """Saved as abaw3_rnn_attn's trainer saves (`{'state_dict', 'optim_dict', ...}`), converted with
  `--num_heads=2`; the `lstm` run is also evaluated with `--mode=eval`."""
  torch.manual_seed(0)
  net = _randomise_layer_norms(_KarasAV(AUDIO_CNN_TABLES['emo18'], temporal, model_fields['d_embedding'],
                                        model_fields['num_layers'])).eval()
  path = tmp_path / 'best.pth.tar'
  torch.save({'state_dict': net.state_dict(), 'optim_dict': {'state': {}, 'param_groups': []}, 'epoch': 5}, str(path))
  config_path, report = converted_run.write_run(system, str(path), str(tmp_path / 'run'),
                                                system_converters.Options(num_heads=2))
  assert "emo18 under 'audio_network.model.model.'" in report and "mobilefacenet under 'visual_network" in report
  config, apply = _restored_apply(config_path, 'smoke')
  assert {k: config.model[k] for k in model_fields} == model_fields
  assert (config.model.audio_backbone, config.model.aux_classes) == ('emo18', 24)
  assert config.compat.get('multv2_reference_layers', False) == (system == 'cross_attn')
  batch = _av_batch(config, 2, seed=1)
  out = apply(batch)
  windows = np.stack([[a[o:o + config.model.audio_window] for o in offs]
                      for a, offs in zip(batch['audio'], batch['audio_offsets'])])
  with torch.no_grad():
    va, cat = net(torch.from_numpy(windows), torch.from_numpy(batch['faces'].astype(np.float32) / 255.0))
  for ours, theirs in ((out['va'], va), (out['cat'], cat)):
    ours, theirs = np.asarray(ours), theirs.numpy()
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-5
  if system == 'lstm':
    _check_eval_writes_predictions(config_path, tiny_tree, tmp_path)
    with pytest.raises(ValueError, match=r"not a checkpoint of abaw3_rnn_attn `AudioVisualAttentionNetwork` \(selfattn\).*"
                                         r"has no tensor 'seq2seq_model.1.linear.weight'"):
      converted_run.write_run('self_attn', str(path), str(tmp_path / 'other'))


def _check_eval_writes_predictions(config_path, tiny_tree, tmp_path):
  """`--mode=eval` on the converted run (the tiny synthetic tree): one prediction row per annotation row."""
  config = converted_run.load_config(config_path, 'smoke')
  config.data.update(manual_dir=str(tiny_tree), records_dir=str(tmp_path / 'records'), test_list='va_test_set.txt')
  results = loop.evaluate_only(config, str(config_path.parent))
  assert np.isfinite(results['validation']['ccc_mean'])
  records = records_lib.open_partition(prepare.input_dir(config), 'validation', config)
  for video in records.videos:
    lines = (config_path.parent / 'predictions' / 'validation' / f'{video.name}.txt').read_text().splitlines()
    assert lines[0] == 'valence,arousal' and len(lines) - 1 == video.num_rows


def _torch_lfan():
  sys.path.insert(0, 'tools')
  import torch_lfan  # pylint: disable=g-import-not-at-top
  return torch_lfan


class _Chomp1d(tnn.Module):
  def __init__(self, chomp: int):
    super().__init__()
    self.chomp = chomp

  def forward(self, x):
    return x[:, :, :-self.chomp]


class _TemporalBlock(tnn.Module):
  """ABAW2 `TemporalBlock`: old-style `weight_norm` conv1 / conv2 (`weight_g`, `weight_v`), also held by the
  Sequential `net` (so saved twice), LeakyReLU, Dropout2d, a 1x1 `downsample` where the width changes."""

  def __init__(self, c_in: int, c_out: int, k: int, dilation: int):
    super().__init__()
    pad = (k - 1) * dilation
    self.conv1 = tnn.utils.weight_norm(tnn.Conv1d(c_in, c_out, k, padding=pad, dilation=dilation))
    self.chomp1, self.relu1, self.dropout1 = _Chomp1d(pad), tnn.LeakyReLU(), tnn.Dropout2d(0.1)
    self.conv2 = tnn.utils.weight_norm(tnn.Conv1d(c_out, c_out, k, padding=pad, dilation=dilation))
    self.chomp2, self.relu2, self.dropout2 = _Chomp1d(pad), tnn.LeakyReLU(), tnn.Dropout2d(0.1)
    self.net = tnn.Sequential(self.conv1, self.chomp1, self.relu1, self.dropout1,
                              self.conv2, self.chomp2, self.relu2, self.dropout2)
    self.downsample = tnn.Conv1d(c_in, c_out, 1) if c_in != c_out else None
    self.relu = tnn.LeakyReLU()

  def forward(self, x):
    return self.relu(self.net(x) + (x if self.downsample is None else self.downsample(x)))


class _TemporalConvNet(tnn.Module):
  def __init__(self, c_in: int, channels, k: int = 5):
    super().__init__()
    self.network = tnn.Sequential(*[_TemporalBlock(a, b, k, 2 ** i)
                                    for i, (a, b) in enumerate(zip((c_in, *channels), channels))])

  def forward(self, x):
    return self.network(x)


class _My2d1ddy(tnn.Module):
  """ABAW2 `my_2d1ddy` (LFAN) with its names: `spatial` (the IR-50 `Backbone`: tools/torch_lfan.py's IR-50 holds
  InsightFace's names; its `logits` removed, as `my_res50.backbone` has none), `temporal`, `temporal1`,
  `temporal2`, `encoder{1,2,3}`, `encoderQ{1,2,3}`, `encoderV{1,2,3}`, the unused `gn1`, `gn2`, `ln`, `regressor`;
  its forward as upstream, follower queries and values from the keys included (spec lfan bug 2)."""

  def __init__(self, units, visual_channels, follower_channels, outputs: int):
    super().__init__()
    self.spatial = _torch_lfan().IR50(units, 40)
    del self.spatial.logits
    self.temporal = _TemporalConvNet(512, visual_channels)
    self.temporal1, self.temporal2 = _TemporalConvNet(128, follower_channels), _TemporalConvNet(39, follower_channels)
    v, f = visual_channels[-1], follower_channels[-1]
    for suffix in ('', 'Q', 'V'):
      setattr(self, f'encoder{suffix}1', tnn.Linear(v, 32))
      setattr(self, f'encoder{suffix}2', tnn.Linear(f, 32))
      setattr(self, f'encoder{suffix}3', tnn.Linear(32, 32))
    self.gn1, self.gn2, self.ln = tnn.GroupNorm(8, 32), tnn.GroupNorm(8, 32), tnn.LayerNorm([3, 32])
    self.regressor = tnn.Linear(v + 96, outputs)

  def forward(self, faces, x1, x2):
    """faces [B, T, 3, 40, 40] normalised, x1 VGGish [B, T, 128], x2 MFCC [B, T, 39] -> [B, T, outputs]."""
    b, t = faces.shape[:2]
    x = self.spatial(faces.reshape(b * t, *faces.shape[2:])).view(b, t, -1).transpose(1, 2)
    x = self.temporal(x).transpose(1, 2).reshape(b * t, -1)
    x1 = self.temporal1(x1.transpose(1, 2)).transpose(1, 2)
    x2 = self.temporal2(x2.transpose(1, 2)).transpose(1, 2)
    x0, x1, x2 = self.encoder1(x), self.encoder2(x1.reshape(b * t, -1)), self.encoder3(x2.reshape(b * t, -1))
    xq = [self.encoderQ1(x), self.encoderQ2(x1), self.encoderQ3(x2)]
    xv = [self.encoderV1(x), self.encoderV2(x1), self.encoderV3(x2)]
    k, q, v = torch.stack([x0, x1, x2], -2), torch.stack(xq, -2), torch.stack(xv, -2)
    out = self.ln(torch.softmax(k @ q.transpose(1, 2) / np.sqrt(32), -1) @ v + v).reshape(b * t, -1)
    return self.regressor(torch.cat([x, out], -1)).view(b, t, -1)


def _checkpoint_variables(run_dir):
  """The params and batch stats of the run's step-0 checkpoint, restored without a target."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(run_dir / 'checkpoints' / '0' / 'state')
  return {'params': state['params'], 'batch_stats': state['batch_stats']}


@pytest.mark.parametrize('outputs, emotion', [(1, 'arousal'), (2, '')])
def test_lfan_converts_into_a_run_that_matches_the_upstream_model(tmp_path, outputs, emotion):
  """ABAW2's trainer saves `model.state_dict()` bare; a one-output model needs --emotion."""
  torch.manual_seed(0)
  net = _My2d1ddy((1, 1, 1, 1), (16, 12), (8, 32), outputs)  # followers end at 32: bug 2 feeds EQ/EV the 32-d keys
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
        m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
  net = _randomise_layer_norms(net).eval()
  path = tmp_path / 'model_state_dict.pth'
  torch.save(net.state_dict(), str(path))
  if outputs == 1:
    with pytest.raises(ValueError, match='give --emotion=valence or --emotion=arousal'):
      converted_run.write_run('lfan', str(path), str(tmp_path / 'nothing'))
  config_path, report = converted_run.write_run('lfan', str(path), str(tmp_path / 'run'),
                                                system_converters.Options(emotion=emotion))
  assert "ir50 under 'spatial.'" in report and 'gn1, gn2' in report
  config = converted_run.load_config(config_path, 'smoke')
  assert (tuple(config.model.visual_channels), tuple(config.model.follower_channels), tuple(config.model.ir50_units),
          config.model.emotion, config.data.crop_size) == ((16, 12), (8, 32), (1, 1, 1, 1), emotion or 'both', 40)
  assert config.compat.follower_qv_from_key
  config.model.feature_norm.update(vggish=(0.0, 1.0), mfcc=(0.0, 1.0))
  config.train.batch_size = 2
  batch = _torch_lfan().random_batch(config)
  out = jax.jit(functools.partial(systems.build_model(config.model, config.compat).apply, train=False))(
      _checkpoint_variables(config_path.parent), batch)['va']
  mfcc = np.array(mfcc_lib.frame_mfcc(slice_audio_windows(batch['audio'], batch['audio_offsets'],
                                                          mfcc_lib.FRAME_MFCC_SAMPLES)))
  faces = torch.from_numpy(batch['faces']).permute(0, 1, 4, 2, 3).float() / 255.0
  with torch.no_grad():
    ref = net((faces - 0.5) / 0.5, torch.from_numpy(batch['vggish_features']), torch.from_numpy(mfcc)).numpy()
  ours = np.asarray(out)
  if outputs == 1:
    assert np.all(ours[..., 0] == 0)  # the valence column of an arousal model
    ours = ours[..., 1:]
  assert ours.shape == ref.shape
  assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5


class _RJCABlock(tnn.Module):
  """RJCA's `LSTM` block (`models/layer.py`): {rnn, init_hidden [h0 rows; c0 rows], linear}, output L2-normalised."""

  def __init__(self, embed: int, dim: int):
    super().__init__()
    self.rnn = tnn.LSTM(embed, dim // 2, num_layers=2, bidirectional=True, batch_first=True)
    self.linear = tnn.Linear(dim + embed, dim)
    self.init_hidden = tnn.Parameter(tnn.init.xavier_uniform_(torch.empty(8, dim // 2)))

  def forward(self, x):
    state = self.init_hidden[:, None].expand(8, x.shape[0], self.init_hidden.shape[1]).contiguous()
    h = self.rnn(x, (state[:4], state[4:]))[0]
    return torch.nn.functional.normalize(self.linear(torch.cat([x, h], -1)), dim=-1)


class _CAM(tnn.Module):
  """RecurrentJointAttentionwithLSTMs `CAM` with its names: `audio_extract`, `video_extract`, `Joint`,
  `video_attn.attn` (`PositionAttn`: affine_audio, affine_video, affine_v, affine_g, affine_h, affine_feat),
  `coattn.dcn_layers.<r>` (`NormalSubLayer`: dense_coattn {query_linear, key1_linear, key2_linear, value1_linear,
  value2_linear}, linears), `vregressor`, `aregressor`; its forward as upstream (the [49, 512] view of the
  channel-major features, the audio term along the position axis)."""

  def __init__(self, clips: int, iterations: int):
    super().__init__()
    self.audio_extract, self.video_extract = _RJCABlock(512, 512), _RJCABlock(512, 512)
    self.Joint = _RJCABlock(1024, 512)
    attn, self.video_attn = tnn.Module(), tnn.Module()  # BottomUpExtract holding its PositionAttn as `attn`
    attn.affine_audio, attn.affine_video, attn.affine_feat = (tnn.Linear(512, 512) for _ in range(3))
    attn.affine_v, attn.affine_g = tnn.Linear(512, 49, bias=False), tnn.Linear(512, 49, bias=False)
    attn.affine_h = tnn.Linear(49, 1, bias=False)
    self.video_attn.attn = attn
    layers = []
    for _ in range(iterations):
      layer, coattn = tnn.Module(), tnn.Module()
      coattn.query_linear = tnn.Linear(1024, 1024)
      coattn.key1_linear, coattn.key2_linear = tnn.Linear(clips, clips), tnn.Linear(clips, clips)
      coattn.value1_linear, coattn.value2_linear = tnn.Linear(512, 512), tnn.Linear(512, 512)
      layer.dense_coattn = coattn
      layer.linears = tnn.ModuleList([tnn.Sequential(tnn.Linear(1024, 512), tnn.ReLU(), tnn.Dropout(0.6))
                                      for _ in range(2)])
      layers.append(layer)
    self.coattn = tnn.Module()
    self.coattn.dcn_layers = tnn.ModuleList(layers)
    self.vregressor, self.aregressor = (tnn.Sequential(tnn.Linear(512, 128), tnn.ReLU(), tnn.Dropout(0.6),
                                                       tnn.Linear(128, 1)) for _ in range(2))

  def _position_attn(self, video, audio):
    attn, (b, l) = self.video_attn.attn, video.shape[:2]
    v = video.view(b * l, -1, 512)
    g = torch.relu(attn.affine_audio(audio.reshape(b * l, -1)))
    z = attn.affine_h(torch.tanh(attn.affine_v(torch.relu(attn.affine_video(v))) + attn.affine_g(g)[:, :, None]))
    alpha = torch.softmax(z[..., 0], -1)[:, None]
    return attn.affine_feat(torch.bmm(alpha, v).view(b, l, 512))

  def forward(self, audio, video):
    video, audio = torch.nn.functional.normalize(video, dim=-1), torch.nn.functional.normalize(audio, dim=-1)
    audio = self.audio_extract(audio)
    video = self.video_extract(self._position_attn(video, audio))
    for layer in self.coattn.dcn_layers:
      c = layer.dense_coattn
      joint = c.query_linear(torch.cat([video, audio], -1))
      weighted = []
      for x, key, value in ((video, c.key1_linear, c.value1_linear), (audio, c.key2_linear, c.value2_linear)):
        scores = torch.tanh(torch.bmm(key(x.transpose(1, 2)), joint) / np.sqrt(1024))
        weighted.append(torch.relu(torch.tanh(torch.bmm(value(x), scores))))
      video, audio = video + layer.linears[0](weighted[0]), audio + layer.linears[1](weighted[1])
    h = self.Joint(torch.cat([video, audio], -1))
    return torch.stack([self.vregressor(h)[..., 0], self.aregressor(h)[..., 0]], -1)


def test_rjca_converts_tsav_and_cam_into_a_run_that_matches_the_upstream_model(tmp_path):
  """The TSAV backbones ({'state_dict'}) and the fusion as `main.py` saves it ({'net', 'best_Val_accV', ...}), given
  together; the fusion is compared on backbone features (TSAV's channel-major flatten for the reference)."""
  tv = torch_checkpoints.import_torchvision()
  torch.manual_seed(0)
  tsav, cam = torch_checkpoints.tsav(torch, tv).eval(), _randomise_layer_norms(_CAM(clips=4, iterations=1)).eval()
  torch.save({'state_dict': tsav.state_dict(), 'epoch': 9}, str(tmp_path / 'TSAV_Sub4_544k.pth.tar'))
  torch.save({'net': cam.state_dict(), 'best_Val_accV': 0.4, 'best_Val_accA': 0.5, 'best_Val_acc_epoch': 3},
             str(tmp_path / 'recursivejointattention.pt'))
  config_path, report = converted_run.write_run(
      'rjca', f'{tmp_path / "TSAV_Sub4_544k.pth.tar"},{tmp_path / "recursivejointattention.pt"}', str(tmp_path / 'run'))
  assert "r2plus1d_18 under 'video_model.r2plus1d.'" in report and 'fc' in report
  config = converted_run.load_config(config_path)
  assert (config.model.num_iterations, config.data.num_clips, config.data.image_size) == (1, 4, 112)
  assert config.compat.scrambled_spatial_view and config.compat.audio_guidance_on_position_axis
  variables = _checkpoint_variables(config_path.parent)
  rng = np.random.default_rng(2)
  visual = rng.standard_normal((2, 4, 49, 512)).astype(np.float32)  # [B, L, positions, channels]
  audio = rng.standard_normal((2, 4, 512)).astype(np.float32)
  batch = dict(visual_features=visual, audio_features=audio, mask=np.ones((2, 4), bool))
  apply = jax.jit(functools.partial(systems.build_model(config.model, config.compat).apply, train=False))
  out = np.asarray(apply(variables, batch)['va'])
  channel_major = np.ascontiguousarray(visual.swapaxes(-1, -2)).reshape(2, 4, -1)  # TSAV's flatten of [512, 1, 7, 7]
  with torch.no_grad():
    ref = cam(torch.from_numpy(audio), torch.from_numpy(channel_major))
  assert out.shape == ref.shape == (2, 4, 2)
  assert np.abs(out - ref.numpy()).max() / np.abs(ref.numpy()).max() < 1e-5
  stem = variables['params']['visual']['stem_spatial']['kernel']
  expected_stem = tsav.video_model.r2plus1d.stem[0].weight.detach().numpy()[:, :3].transpose(2, 3, 4, 1, 0)
  np.testing.assert_array_equal(stem, expected_stem)  # the mask channel of TSAV's 4-channel stem dropped
