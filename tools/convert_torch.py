"""Converts a PyTorch checkpoint, as the upstream code saved it, into what affjax loads: a backbone's Flax variables
(`--out`), or a whole upstream model as a run directory that `--mode=eval` uses (`--out_workdir`).

  python tools/convert_torch.py --network=mobilefacenet --checkpoint=mobilefacenet_model_best.pth.tar --out=mfn.msgpack
  python -m affjax.main --config=configs/cross_attn.py --workdir=DIR --config.model.pretrained.visual=mfn.msgpack

  python tools/convert_torch.py --network=lstm --checkpoint=best.pth.tar --out_workdir=RUN
  python -m affjax.main --config=RUN/config.py --workdir=RUN --mode=eval

The network's tensors are read with its upstream module's names wherever they sit in the file (the prefix is
found, or given with --prefix); every tensor under that prefix must be used (except known heads), so a
checkpoint of a different network fails here, naming the missing and the unused tensors.
"""
from __future__ import annotations

import jax
from absl import app, flags

from affjax.models import converters, torch_convert
from affjax.systems import converters as system_converters

_SYSTEMS = system_converters.upstream_models()
_NETWORK = flags.DEFINE_enum(
    'network', None, sorted(converters.NETWORKS) + sorted(_SYSTEMS),
    'Which backbone (--out) or whole system (--out_workdir) the checkpoint holds: '
    + '; '.join(f'{name}: {net.upstream}' for name, net in sorted(converters.NETWORKS.items())) + '; '
    + '; '.join(f'{name}: {upstream}' for name, (_, upstream) in sorted(_SYSTEMS.items())))
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'PyTorch checkpoint as upstream code saved it (a state dict, or a dict wrapping one); several, '
    'comma-separated, for a system whose parts were saved apart (rjca: TSAV,CAM).')
_OUT = flags.DEFINE_string('out', None, 'Where to write the Flax variables of a backbone (.msgpack).')
_OUT_WORKDIR = flags.DEFINE_string('out_workdir', None, 'The run directory to write a whole system into.')
_PREFIX = flags.DEFINE_string('prefix', None, 'Prefix of the backbone inside the checkpoint, e.g. "audio_model."; '
                              'found from the network\'s tensor names when not given.')
_NUM_HEADS = flags.DEFINE_integer(
    'num_heads', 4, 'Attention heads of a whole self_attn / cross_attn model (its tensors do not tell them; 4 is the '
    'upstream default).')
_EMOTION = flags.DEFINE_enum('emotion', '', ['', 'valence', 'arousal'],
                             'What a whole lfan model with one output predicts (the paper: one model per emotion).')
flags.mark_flags_as_required(['network', 'checkpoint'])


def main(argv):
  del argv
  if _NETWORK.value in _SYSTEMS:
    if not _OUT_WORKDIR.value:
      raise app.UsageError(f'--network={_NETWORK.value} is a whole system: give --out_workdir')
    from affjax import converted_run  # pylint: disable=g-import-not-at-top  (loads the training stack)
    options = system_converters.Options(num_heads=_NUM_HEADS.value, emotion=_EMOTION.value)
    config_path, report = converted_run.write_run(_NETWORK.value, _CHECKPOINT.value, _OUT_WORKDIR.value, options)
    print(report)
    print(f'evaluate with: python -m affjax.main --config={config_path} --workdir={config_path.parent} --mode=eval')
    return
  if not _OUT.value:
    raise app.UsageError(f'--network={_NETWORK.value} is a backbone: give --out')
  conversion = converters.convert_checkpoint(_NETWORK.value, _CHECKPOINT.value, _PREFIX.value)
  torch_convert.save_variables(_OUT.value, conversion.variables)
  print(conversion.report(_NETWORK.value))
  print(f'{_OUT.value}: {_NETWORK.value}, {sum(v.size for v in jax.tree.leaves(conversion.variables)):,} values')


if __name__ == '__main__':
  app.run(main)
