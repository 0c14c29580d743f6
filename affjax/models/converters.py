"""Which converter turns a PyTorch checkpoint of each backbone into Flax variables (`tools/convert_torch.py`).

Each network is read with the parameter names of its upstream PyTorch module, wherever it sits in the file:
the prefix (e.g. `model.` of an End2You extractor, `video_model.r2plus1d.` of a TSAV checkpoint) is found
from the network's first and last tensors unless given.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from affjax.models import torch_convert
from affjax.models.backbones import audio1d, inception_resnet_v1, ir50, mobilefacenet, resnet, vggface2_resnet, vggish


class Network(NamedTuple):
  convert: Callable[[torch_convert.StateDictReader], dict]
  anchors: tuple[str, ...]  # tensors every checkpoint of the network has (first and last read): they locate it
  heads: tuple[str, ...]  # tensor-name prefixes of heads affjax does not use
  upstream: str  # the upstream module and file format it reads (README, --helpfull)


def _audio_cnn(table) -> Network:
  last = f'network.{2 * (len(table) - 1)}.1.running_var'
  return Network(functools.partial(audio1d.from_torch, table), ('network.0.0.weight', last), (),
                 "End2You `Base` as abaw3_rnn_attn's `AudioConvEncoder` builds it (`model.network.<2i>.{0,1}`): "
                 'its extractor files (bare state dict), or End2You `{"state_dict": ...}` checkpoints')


NETWORKS: dict[str, Network] = {
    'mobilefacenet': Network(
        mobilefacenet.from_torch, ('conv1.conv.weight', 'output_layer.conv_6_dw.bn.running_var'),
        ('output_layer.linear.', 'output_layer.bn.'),
        'MobileFaceNet of abaw3_rnn_attn / UncertainEmotion, face-alignment `{"state_dict": ...}` '
        '(the 136-way landmark head is left out)'),
    'inceptionresnetv1': Network(
        inception_resnet_v1.from_torch, ('conv2d_1a.conv.weight', 'last_bn.running_var'), ('logits.',),
        'facenet-pytorch `InceptionResnetV1`, its released bare state dicts (`logits` left out)'),
    'vggface2_resnet50': Network(
        vggface2_resnet.from_torch, ('conv1.weight', 'layer4.2.bn3.running_var'), ('fc.',),
        'VGGFace2-pytorch `resnet50`, Oxford `resnet50_*_weight.pkl` (pickled numpy) or a torch state dict'),
    'vggface2_senet50': Network(
        functools.partial(vggface2_resnet.from_torch, se=True), ('conv1.weight', 'layer4.2.conv5.weight'), ('fc.',),
        'VGGFace2-pytorch `senet50`, Oxford `senet50_*_weight.pkl` (pickled numpy) or a torch state dict'),
    'ir50': Network(
        ir50.from_torch, ('input_layer.0.weight', 'output_layer.4.running_var'), ('logits.',),
        'ABAW2 (LFAN) IR-50 `Backbone`, e.g. under `backbone.` of its `my_res50` state dict (`logits` left out)'),
    'vggish': Network(
        vggish.from_torch, ('features.0.weight', 'embeddings.4.weight'), ('pproc.',),
        'torchvggish `VGGish`, its released bare state dict (`pproc` PCA left out)'),
    **{name: _audio_cnn(table) for name, table in audio1d.AUDIO_CNN_TABLES.items()},
    'resnet18_audio': Network(  # 1-channel conv1 (log-mel patches)
        resnet.resnet18_from_torch, ('conv1.weight', 'layer4.1.bn2.running_var'), ('fc.',),
        'torchvision `resnet18` with a 1-channel conv1, e.g. TSAV `{"state_dict": ...}` (`audio_model.resnet.`)'),
    'r2plus1d_18': Network(
        resnet.r2plus1d18_from_torch, ('stem.0.weight', 'layer4.1.conv2.1.running_var'), ('fc.',),
        'torchvision `video.r2plus1d_18`, e.g. TSAV `{"state_dict": ...}` (`video_model.r2plus1d.`, '
        'input channels [0, 3) of its 4-channel stem kept)'),
}


def find_prefix(network: str, state_dict: torch_convert.StateDict, source: str = 'checkpoint') -> str:
  """The one prefix under which `state_dict` holds all of `network`'s anchor tensors; raises naming the
  candidates when there are several, or the names it looked for when there is none."""
  anchors = NETWORKS[network].anchors
  found = sorted(k.removesuffix(anchors[0]) for k in state_dict if k.endswith(anchors[0]))
  prefixes = [p for p in found if (not p or p.endswith('.')) and all(p + a in state_dict for a in anchors)]
  if len(prefixes) == 1:
    return prefixes[0]
  if prefixes:
    raise ValueError(f'{source} holds {len(prefixes)} {network} networks, under {prefixes}: choose one with --prefix')
  tops = sorted({k.split('.')[0] for k in state_dict})
  raise ValueError(f'{source} has no {network} ({NETWORKS[network].upstream}): no prefix P with tensors P{anchors[0]} '
                   f'and P{anchors[-1]}; its top-level names are {torch_convert.name_list(tops)}')


class Conversion(NamedTuple):
  variables: dict
  prefix: str
  heads_left_out: list[str]  # tensors under the prefix that are heads affjax does not use
  outside_prefix: list[str]  # tensors of other parts of the checkpoint

  def report(self, network: str) -> str:
    lines = [f'{network}: read under {self.prefix!r}' if self.prefix else f'{network}: read']
    if self.heads_left_out:
      lines.append(f'  heads left out: {torch_convert.name_list(self.heads_left_out)}')
    if self.outside_prefix:
      lines.append(f'  {len(self.outside_prefix)} tensors outside {self.prefix!r} not read: '
                   f'{torch_convert.name_list(self.outside_prefix, 6)}')
    return '\n'.join(lines)


def convert_state_dict(network: str, state_dict: torch_convert.StateDict, source: str = 'checkpoint',
                       prefix: str | None = None) -> Conversion:
  """`network`'s variables from the tensors under `prefix` (found by `find_prefix` when None); raises naming the
  missing tensor and the ones left unread when the names do not fit."""
  if network not in NETWORKS:
    raise ValueError(f'no converter for network {network!r}; known: {sorted(NETWORKS)}')
  net = NETWORKS[network]
  prefix = find_prefix(network, state_dict, source) if prefix is None else prefix
  sd = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
  reader = torch_convert.StateDictReader(sd, source)
  try:
    variables = net.convert(reader)
  except torch_convert.MissingTensor as e:
    unread = [prefix + k for k in reader.unused(net.heads)]
    raise ValueError(f'{source}: {network} ({net.upstream}) needs tensor {prefix + e.key!r}, which is missing; '
                     f'unread tensors: {torch_convert.name_list(unread)}') from None
  unread = reader.unused(net.heads)
  if unread:
    where = f' under {prefix!r}' if prefix else ''
    raise ValueError(f'{source}: {len(unread)} tensors{where} were not converted to {network}: '
                     f'{torch_convert.name_list([prefix + k for k in unread])}; '
                     'the checkpoint does not match this network')
  return Conversion(variables, prefix, sorted(prefix + k for k in set(reader.unused()) - set(unread)),
                    sorted(k for k in state_dict if not k.startswith(prefix)))


def convert(network: str, state_dict: torch_convert.StateDict, source: str = 'checkpoint',
            prefix: str | None = None) -> dict:
  """The Flax variables of `network` from a state dict (`convert_state_dict`)."""
  return convert_state_dict(network, state_dict, source, prefix).variables


def convert_checkpoint(network: str, path: str, prefix: str | None = None) -> Conversion:
  """`network` from a checkpoint file as upstream code saves it (`torch_convert.read_torch_checkpoint`): what
  tools/convert_torch.py runs."""
  return convert_state_dict(network, torch_convert.read_torch_checkpoint(path), path, prefix)
