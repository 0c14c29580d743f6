"""Checkpoints saved as upstream training code saves them, converted through tools/convert_torch.py's path, and
PyTorch references written with the upstream modules' names and nesting, which the conversion tests share."""
from __future__ import annotations

import pathlib
import sys
import types

from affjax.models import converters


def save_and_convert(network: str, obj, path: pathlib.Path, prefix: str | None = None) -> converters.Conversion:
  """`torch.save(obj, path)` (a state dict, or a dict wrapping one), then `converters.convert_checkpoint`, the
  function the CLI runs."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.save(obj, str(path))
  return converters.convert_checkpoint(network, str(path), prefix)


def upstream_mobilefacenet(torch):
  """The MobileFaceNet Karas et al. use (abaw3_rnn_attn `models/modules/mobilefacenet.py`, from UncertainEmotion),
  written here with its module names and nesting: `Conv_block`s {conv, bn, prelu}, `Depth_Wise` {conv, conv_dw,
  project}, `Residual`s holding their blocks in `model`, and the GDC `output_layer` {conv_6_dw, linear, bn} with
  face-alignment's 136-way landmark head. `features` runs the network as the study does once the head is removed
  (`remove_output_layer`: the output is conv_6_dw flattened), on inputs normalised as (x - 0.5) / 0.5."""
  tnn = torch.nn

  class ConvBlock(tnn.Module):
    def __init__(self, cin, cout, k=1, stride=1, pad=0, groups=1, prelu=True):
      super().__init__()
      self.conv = tnn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)
      self.bn = tnn.BatchNorm2d(cout)
      if prelu:
        self.prelu = tnn.PReLU(cout)

    def forward(self, x):
      x = self.bn(self.conv(x))
      return self.prelu(x) if hasattr(self, 'prelu') else x

  class DepthWise(tnn.Module):
    def __init__(self, cin, cout, groups, stride, residual):
      super().__init__()
      self.conv, self.conv_dw = ConvBlock(cin, groups), ConvBlock(groups, groups, 3, stride, 1, groups=groups)
      self.project, self.residual = ConvBlock(groups, cout, prelu=False), residual

    def forward(self, x):
      y = self.project(self.conv_dw(self.conv(x)))
      return x + y if self.residual else y

  class Residual(tnn.Module):
    def __init__(self, c, num_block, groups):
      super().__init__()
      self.model = tnn.Sequential(*[DepthWise(c, c, groups, 1, True) for _ in range(num_block)])

    def forward(self, x):
      return self.model(x)

  class GDC(tnn.Module):
    def __init__(self, embedding_size):
      super().__init__()
      self.conv_6_dw = ConvBlock(512, 512, 7, groups=512, prelu=False)
      self.linear = tnn.Linear(512, embedding_size, bias=False)
      self.bn = tnn.BatchNorm1d(embedding_size)

  class MobileFaceNetUpstream(tnn.Module):
    def __init__(self):
      super().__init__()
      self.conv1, self.conv2_dw = ConvBlock(3, 64, 3, 2, 1), ConvBlock(64, 64, 3, 1, 1, groups=64)
      self.conv_23, self.conv_3 = DepthWise(64, 64, 128, 2, False), Residual(64, 4, 128)
      self.conv_34, self.conv_4 = DepthWise(64, 128, 256, 2, False), Residual(128, 6, 256)
      self.conv_45, self.conv_5 = DepthWise(128, 128, 512, 2, False), Residual(128, 2, 256)
      self.conv_6_sep = ConvBlock(128, 512)
      self.output_layer = GDC(136)

    def features(self, x):
      x = (x - 0.5) / 0.5
      for m in (self.conv1, self.conv2_dw, self.conv_23, self.conv_3, self.conv_34, self.conv_4, self.conv_45,
                self.conv_5, self.conv_6_sep, self.output_layer.conv_6_dw):
        x = m(x)
      return x.flatten(1)

  net = MobileFaceNetUpstream()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
        m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
      if isinstance(m, tnn.PReLU):
        m.weight.uniform_(0.0, 0.5)
  return net.eval()


def end2you_base(torch, table):
  """End2You's `Base` (end2you/models/audio/base.py) written here with its nesting: `network` is a Sequential
  of, per block, a Sequential(Conv1d, BatchNorm1d, ELU) and a MaxPool1d, so the tensors are
  `network.<2i>.0.*` and `network.<2i>.1.*`; random BatchNorm statistics."""
  tnn = torch.nn

  class Base(tnn.Module):
    def __init__(self):
      super().__init__()
      layers, cin = [], 1
      for blk in table:
        layers += [tnn.Sequential(tnn.Conv1d(cin, blk.features, blk.kernel_size, padding=blk.padding),
                                  tnn.BatchNorm1d(blk.features), tnn.ELU()),
                   tnn.MaxPool1d(blk.pool, blk.pool, blk.pool_padding)]
        cin = blk.features
      self.network = tnn.Sequential(*layers)

    def forward(self, x):
      return self.network(x)

  net = Base()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, tnn.BatchNorm1d):
        m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
  return net.eval()


def import_torchvision():
  """torchvision, also where a CUDA build of its ops sits next to CPU-only torch (the models need no ops)."""
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
  except RuntimeError:
    for name in [m for m in sys.modules if m.startswith('torchvision')]:
      del sys.modules[name]
    sys.modules['torchvision._meta_registrations'] = types.ModuleType('torchvision._meta_registrations')
    import torchvision  # pylint: disable=g-import-not-at-top
  return torchvision


def tsav(torch, tv):
  """TSAV's `TwoStreamAuralVisualModel` (RecurrentJointAttentionwithLSTMs `models/tsav.py`) with its names:
  `audio_model.resnet` (torchvision resnet18, 1-channel conv1), `video_model.r2plus1d` (r2plus1d_18 with a
  4-channel stem), their `fc` and the video `avgpool` replaced by parameter-free modules, and the joint head
  `fc` = Sequential(Dropout, Linear(1024, 17))."""
  tnn = torch.nn
  model, audio_model, video_model = tnn.Module(), tnn.Module(), tnn.Module()
  audio_model.resnet = tv.models.resnet18()
  audio_model.resnet.conv1 = tnn.Conv2d(1, 64, 7, 2, 3, bias=False)
  video_model.r2plus1d = tv.models.video.r2plus1d_18()
  video_model.r2plus1d.stem[0] = tnn.Conv3d(4, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False)
  audio_model.resnet.fc = video_model.r2plus1d.fc = video_model.r2plus1d.avgpool = tnn.Identity()
  model.audio_model, model.video_model = audio_model, video_model
  model.fc = tnn.Sequential(tnn.Dropout(0.0), tnn.Linear(1024, 17))
  return model
