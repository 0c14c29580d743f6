"""Converts a PyTorch checkpoint of a backbone, as the upstream code saved it, into the Flax variables an
affjax config loads.

  python tools/convert_torch.py --network=mobilefacenet --checkpoint=mobilefacenet_model_best.pth.tar --out=mfn.msgpack
  python -m affjax.main --config=configs/cross_attn.py --workdir=DIR --config.model.pretrained.visual=mfn.msgpack

The network's tensors are read with its upstream module's names wherever they sit in the file (the prefix is
found, or given with --prefix); every tensor under that prefix must be used (except known heads), so a
checkpoint of a different network fails here, naming the missing and the unused tensors.
"""
from __future__ import annotations

import jax
from absl import app, flags

from affjax.models import converters, torch_convert

_NETWORK = flags.DEFINE_enum(
    'network', None, sorted(converters.NETWORKS), 'Which backbone the checkpoint holds: '
    + '; '.join(f'{name}: {net.upstream}' for name, net in sorted(converters.NETWORKS.items())))
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'PyTorch checkpoint (a state dict, or {"state_dict": ...}).')
_OUT = flags.DEFINE_string('out', None, 'Where to write the Flax variables (.msgpack).')
_PREFIX = flags.DEFINE_string('prefix', None, 'Prefix of the backbone inside the checkpoint, e.g. "audio_model."; '
                              'found from the network\'s tensor names when not given.')
flags.mark_flags_as_required(['network', 'checkpoint', 'out'])


def main(argv):
  del argv
  conversion = converters.convert_checkpoint(_NETWORK.value, _CHECKPOINT.value, _PREFIX.value)
  torch_convert.save_variables(_OUT.value, conversion.variables)
  print(conversion.report(_NETWORK.value))
  print(f'{_OUT.value}: {_NETWORK.value}, {sum(v.size for v in jax.tree.leaves(conversion.variables)):,} values')


if __name__ == '__main__':
  app.run(main)
