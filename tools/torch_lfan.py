"""LFAN in PyTorch (spec lfan 2), written from the spec like the Flax model: the parity tests convert its weights,
and tests compare affjax with it (the benchmark, tools/benchmark.py, times the upstream ABAW2 model itself).

  IR50(stage_units, released)        InsightFace module names (`input_layer`, `body.<i>`, `output_layer`, `logits`),
                                     so `affjax.models.converters.convert('ir50', state_dict)` reads it
  TemporalConvNet(c_in, channels, k) weight_norm Conv1d, pad both sides and chomp, Dropout2d, 1x1 residual
  LeaderFollowerFusion(dims, d)      per-frame attention over the modality tokens, joint LayerNorm
  LFAN(...)                          faces [B,T,S,S,3] uint8, vggish [B,T,128], MFCC from audio -> [B,T,2]
  flax_variables(model)              the same weights as affjax LFAN variables; random_batch(config) an input
Frozen IR-50 groups run in eval mode (BatchNorm running averages) without gradients, as affjax's.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from affjax.data.views import frames
from affjax.models import converters
from affjax.models.audio import mfcc as af, spectral
from affjax.models.backbones import ir50 as ir50_lib


class BottleneckIR(nn.Module):

  def __init__(self, c_in: int, width: int, stride: int):
    super().__init__()
    self.shortcut_layer = (nn.MaxPool2d(1, stride) if c_in == width else
                           nn.Sequential(nn.Conv2d(c_in, width, 1, stride, bias=False), nn.BatchNorm2d(width)))
    self.res_layer = nn.Sequential(nn.BatchNorm2d(c_in), nn.Conv2d(c_in, width, 3, 1, 1, bias=False),
                                   nn.PReLU(width), nn.Conv2d(width, width, 3, stride, 1, bias=False),
                                   nn.BatchNorm2d(width))

  def forward(self, x):
    return self.res_layer(x) + self.shortcut_layer(x)


class IR50(nn.Module):
  """`[N, 3, S, S]` normalised faces -> `[N, 512]` unit-norm embeddings; `released` groups train (spec lfan 4)."""

  def __init__(self, stage_units=ir50_lib.IR50_UNITS, size: int = 40, released: int = 3):
    super().__init__()
    self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
    self.body = nn.Sequential(*[BottleneckIR(*spec) for spec in ir50_lib.unit_specs(tuple(stage_units))])
    self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(ir50_lib.HEAD_DROPOUT), nn.Flatten(),
                                      nn.Linear(512 * (size // 8) ** 2, 512), nn.BatchNorm1d(512))
    self.logits = nn.Linear(512, 8)  # the checkpoint's unused classifier
    self.first = ir50_lib.first_trainable_unit(released, tuple(stage_units))
    self.head_trains = released >= 1
    for module in self._frozen():
      module.requires_grad_(False)

  def _frozen(self) -> list[nn.Module]:
    return [self.input_layer, *self.body[:self.first]] + ([] if self.head_trains else [self.output_layer])

  def train(self, mode: bool = True):
    super().train(mode)
    for module in self._frozen():  # frozen groups: BatchNorm running averages, no dropout
      module.eval()
    return self

  def forward(self, x):
    with torch.no_grad():
      x = self.body[:self.first](self.input_layer(x))
    x = self.body[self.first:](x)
    x = self.output_layer(x)
    return x / torch.linalg.norm(x, dim=1, keepdim=True)


class TemporalBlock(nn.Module):

  def __init__(self, c_in: int, c_out: int, k: int, dilation: int, dropout: float):
    super().__init__()
    wn = nn.utils.parametrizations.weight_norm
    self.pad = (k - 1) * dilation
    self.conv1 = wn(nn.Conv1d(c_in, c_out, k, padding=self.pad, dilation=dilation))
    self.conv2 = wn(nn.Conv1d(c_out, c_out, k, padding=self.pad, dilation=dilation))
    self.drop = nn.Dropout1d(dropout)  # whole channels of a window
    self.down = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

  def forward(self, x):  # [B, C, T]
    act = lambda y: F.leaky_relu(y, 0.01)
    y = self.drop(act(self.conv1(x)[:, :, :-self.pad]))
    y = self.drop(act(self.conv2(y)[:, :, :-self.pad]))
    return act(y + (x if self.down is None else self.down(x)))


class TemporalConvNet(nn.Sequential):
  """`[B, C_in, T] -> [B, channels[-1], T]`, level i at dilation 2^i."""

  def __init__(self, c_in: int, channels, k: int = 5, dropout: float = 0.1):
    super().__init__(*[TemporalBlock(a, b, k, 2 ** i, dropout) for i, (a, b) in enumerate(zip((c_in, *channels),
                                                                                              channels))])


class LeaderFollowerFusion(nn.Module):
  """`[h_0 [N, D_0], h_1 [N, D_1], ...] -> [N, D_0 + (M+1) d]` (spec lfan 2.3)."""

  def __init__(self, dims, d: int = 32):
    super().__init__()
    self.d = d
    self.keys = nn.ModuleList(nn.Linear(n, d) for n in dims)
    self.queries = nn.ModuleList(nn.Linear(n, d) for n in dims)
    self.values = nn.ModuleList(nn.Linear(n, d) for n in dims)
    self.norm = nn.LayerNorm([len(dims), d], eps=1e-5)

  def forward(self, hs):
    k = torch.stack([f(h) for f, h in zip(self.keys, hs)], dim=-2)
    q = torch.stack([f(h) for f, h in zip(self.queries, hs)], dim=-2)
    v = torch.stack([f(h) for f, h in zip(self.values, hs)], dim=-2)
    attention = torch.softmax(k @ q.transpose(-1, -2) / self.d ** 0.5, dim=-1)
    fused = self.norm(attention @ v + v)
    return torch.cat([hs[0], fused.flatten(-2)], dim=-1)


def frame_mfcc(audio_segment, offsets):
  """affjax's 39-d MFCC row of each frame (`affjax.models.audio.mfcc.frame_mfcc`) in torch: audio `[B, L]`,
  offsets `[B, T]` -> `[B, T, 39]`."""
  idx = offsets[..., None] + torch.arange(af.FRAME_MFCC_SAMPLES)
  windows = torch.gather(audio_segment[:, None, :].expand(-1, offsets.shape[1], -1), 2, idx)  # [B, T, W]
  frames = windows.unfold(-1, af.N_FFT, af.HOP_LENGTH)  # [B, T, rows, 512]
  window = torch.from_numpy(spectral.hann_window(af.WIN_LENGTH, af.N_FFT))
  power = torch.fft.rfft(frames * window, n=af.N_FFT).abs() ** 2
  mel = power @ torch.from_numpy(spectral.mel_filterbank(af.N_FFT, af.SAMPLE_RATE, af.N_MELS))
  db = 10 * torch.log10(torch.clamp(mel, min=1e-10))
  c = db @ torch.from_numpy(spectral.dct_basis(af.N_MELS, af.N_CEPSTRA)) * torch.from_numpy(af.lifter_weights())

  def deltas(x):  # HTK regression, width 2, edges repeated, over the rows axis
    xp = torch.cat([x[..., :1, :]] * 2 + [x] + [x[..., -1:, :]] * 2, dim=-2)
    n = x.shape[-2]
    return sum(j * (xp[..., 2 + j:2 + j + n, :] - xp[..., 2 - j:2 - j + n, :]) for j in (1, 2)) / 10.0

  d = deltas(c)
  return torch.cat([c, d, deltas(d)], dim=-1)[..., af.CONTEXT_ROWS, :]


class LFAN(nn.Module):
  """The paper's model (spec lfan 2) with VGGish and MFCC followers; `forward(batch)` -> `[B, T, 2]`."""

  def __init__(self, stage_units=ir50_lib.IR50_UNITS, size: int = 40, released: int = 1,
               visual_channels=(128,) * 4, follower_channels=(32,) * 4, k: int = 5, dropout: float = 0.1, d: int = 32):
    super().__init__()
    self.visual = IR50(stage_units, size, released)
    self.visual_tcn = TemporalConvNet(512, visual_channels, k, dropout)
    self.vggish_tcn = TemporalConvNet(128, follower_channels, k, dropout)
    self.mfcc_tcn = TemporalConvNet(af.MFCC_DIM, follower_channels, k, dropout)
    self.fusion = LeaderFollowerFusion((visual_channels[-1], follower_channels[-1], follower_channels[-1]), d)
    self.regressor = nn.Linear(visual_channels[-1] + 3 * d, 2)

  def forward(self, batch):
    faces = batch['faces']
    b, t = faces.shape[:2]
    x = (faces.reshape(b * t, *faces.shape[2:]).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    temporal = lambda tcn, f: tcn(f.transpose(1, 2)).transpose(1, 2)  # [B, T, C] through a TCN
    h_v = temporal(self.visual_tcn, self.visual(x).reshape(b, t, -1))
    h_1 = temporal(self.vggish_tcn, batch['vggish_features'])
    h_2 = temporal(self.mfcc_tcn, frame_mfcc(batch['audio'], batch['audio_offsets']))
    return self.regressor(self.fusion([h_v, h_1, h_2]))


def _numpy(module: nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def tcn_params(tcn: TemporalConvNet) -> dict:
  """Flax parameters of `affjax.models.tcn.TemporalConvNet` from a `TemporalConvNet` here."""
  sd, params = _numpy(tcn), {}
  for i, block in enumerate(tcn):
    level = {}
    for c in ('conv1', 'conv2'):
      level[c] = {'v': np.transpose(sd[f'{i}.{c}.parametrizations.weight.original1'], (2, 1, 0)),
                  'g': sd[f'{i}.{c}.parametrizations.weight.original0'].reshape(-1), 'bias': sd[f'{i}.{c}.bias']}
    if block.down is not None:
      level['downsample'] = {'kernel': sd[f'{i}.down.weight'][:, :, 0].T, 'bias': sd[f'{i}.down.bias']}
    params[f'level{i}'] = level
  return params


def _dense(linear: nn.Linear) -> dict[str, np.ndarray]:
  return {'kernel': linear.weight.detach().numpy().T, 'bias': linear.bias.detach().numpy()}


def flax_variables(model: LFAN) -> dict:
  """The variables of `affjax.systems.lfan.model.LFAN` (followers ('vggish', 'mfcc')) holding `model`'s weights."""
  visual = converters.convert('ir50', _numpy(model.visual))
  fusion = {}
  for m in range(3):
    fusion.update({f'key{m}': _dense(model.fusion.keys[m]), f'query{m}': _dense(model.fusion.queries[m]),
                   f'value{m}': _dense(model.fusion.values[m])})
  fusion['norm'] = {'scale': model.fusion.norm.weight.detach().numpy(), 'bias': model.fusion.norm.bias.detach().numpy()}
  params = dict(visual=visual['params'], visual_tcn=tcn_params(model.visual_tcn),
                vggish_tcn=tcn_params(model.vggish_tcn), mfcc_tcn=tcn_params(model.mfcc_tcn), fusion=fusion,
                regressor=_dense(model.regressor))
  return {'params': params, 'batch_stats': {'visual': visual['batch_stats']}}


def random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
  """A random batch shaped like the pipeline's for an LFAN `config` (numpy, VGGish features included), for the
  parity test and the benchmark."""
  data, b = config.data, config.train.batch_size
  t, s = data.window, data.crop_size
  rng = np.random.default_rng(seed)
  length = frames.audio_segment_length(t, data.audio_window, data.min_fps)
  return dict(faces=rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
              vggish_features=rng.standard_normal((b, t, 128)).astype(np.float32),
              audio=(0.1 * rng.standard_normal((b, length))).astype(np.float32),
              audio_offsets=np.tile((frames.frame_centre_sample(np.arange(t), 30.0)
                                     - frames.frame_centre_sample(0, 30.0)).astype(np.int32), (b, 1)),
              labels=rng.uniform(-1, 1, (b, t, 2)).astype(np.float32), label_mask=np.ones((b, t), bool),
              face_mask=np.ones((b, t), bool), mask=np.ones((b, t), bool))
