"""Converts a PyTorch checkpoint of a backbone into the Flax variables an affjax config loads.

  python tools/convert_torch.py --network=mobilefacenet --checkpoint=mfn.pth --out=mfn.msgpack
  python -m affjax.main --config=configs/cross_attn.py --workdir=DIR --config.model.pretrained.visual=mfn.msgpack

Every tensor of the checkpoint must be used (except known classifier heads), so a checkpoint of a
different network fails here, not silently at training time.
"""
from __future__ import annotations

import jax
from absl import app, flags

from affjax.models import converters, torch_convert

_NETWORK = flags.DEFINE_enum('network', None, sorted(converters.CONVERTERS), 'Which backbone the checkpoint holds.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'PyTorch checkpoint (a state dict, or {"state_dict": ...}).')
_OUT = flags.DEFINE_string('out', None, 'Where to write the Flax variables (.msgpack).')
_PREFIX = flags.DEFINE_string('prefix', '', 'Prefix of the backbone inside the checkpoint, e.g. "audio_model.".')
flags.mark_flags_as_required(['network', 'checkpoint', 'out'])


def main(argv):
  del argv
  state_dict = torch_convert.read_torch_checkpoint(_CHECKPOINT.value)
  variables = converters.convert(_NETWORK.value, state_dict, _CHECKPOINT.value, _PREFIX.value)
  torch_convert.save_variables(_OUT.value, variables)
  print(f'{_OUT.value}: {_NETWORK.value}, {sum(v.size for v in jax.tree.leaves(variables)):,} values')


if __name__ == '__main__':
  app.run(main)
