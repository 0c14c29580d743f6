"""Which converter turns a PyTorch checkpoint of each backbone into Flax variables (`tools/convert_torch.py`)."""
from __future__ import annotations

import functools

from affjax.models import torch_convert
from affjax.models.backbones import audio1d, inception_resnet_v1, ir50, mobilefacenet, resnet, vggface2_resnet, vggish

# network -> (converter from a StateDictReader, tensor-name prefixes of heads affjax does not use)
CONVERTERS = {
    'mobilefacenet': (mobilefacenet.from_torch, ('output_layer', 'linear', 'fc')),
    'inceptionresnetv1': (inception_resnet_v1.from_torch, ('logits',)),
    'vggface2_resnet50': (vggface2_resnet.from_torch, ('fc',)),
    'vggface2_senet50': (functools.partial(vggface2_resnet.from_torch, se=True), ('fc',)),
    'ir50': (ir50.from_torch, ('logits',)),
    'vggish': (vggish.from_torch, ()),
    **{name: (functools.partial(audio1d.from_torch, table), ()) for name, table in audio1d.AUDIO_CNN_TABLES.items()},
    'resnet18_audio': (resnet.resnet18_from_torch, ('fc',)),  # 1-channel conv1 (log-mel patches)
    'r2plus1d_18': (resnet.r2plus1d18_from_torch, ('fc',)),
}


def convert(network: str, state_dict: torch_convert.StateDict, source: str = 'checkpoint', prefix: str = '') -> dict:
  """The Flax variables of `network` from a state dict (the tensors under `prefix`); raises if the
  network is unknown or any tensor is left unconverted."""
  if network not in CONVERTERS:
    raise ValueError(f'no converter for network {network!r}; known: {sorted(CONVERTERS)}')
  converter, heads = CONVERTERS[network]
  sd = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
  reader = torch_convert.StateDictReader(sd, source)
  variables = converter(reader)
  reader.check_all_used(ignore=heads)
  return variables
