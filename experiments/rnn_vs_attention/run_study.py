"""The Karas et al. grid on the synthetic tree: fusion {LSTM, BiLSTM, self-attention, cross-modal attention}
x backbones {low, high complexity} x {frozen, end-to-end}, fixed seeds; writes a table of validation CCC and
training throughput for every cell.

  python experiments/rnn_vs_attention/run_study.py --workdir=/tmp/affjax/study [--only=lstm/low/frozen,...] \
      [--num_steps=200] [-- overrides]      # the table: /tmp/affjax/study/results.md

As in the paper, both schemes start from pretrained backbones: frozen keeps them fixed, end to end trains them
with the fusion. No released checkpoint applies to synthetic faces and voices, so each backbone set is first
pretrained on a second synthetic tree (other people and voices: `--pretrain_seed`) by an end-to-end LSTM run,
and exported with tools/export_backbones.py. `--backbone_init=random` runs the grid from random backbones
instead (frozen random features: the spec's bug 5).

Each run is `python -m affjax.main ...` in its own process, so rerunning the command skips finished runs and
resumes an interrupted one. Frozen cells train from a feature cache of their backbones (tools/cache_features.py),
built once per backbone set. Throughput is the median of the frames/s the run logged (training steps only,
evaluation excluded).
"""
from __future__ import annotations

import itertools
import json
import pathlib
import statistics
import subprocess
import sys

from absl import app, flags

from affjax import profiling

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/affjax/study', 'One subdirectory per cell.')
_TABLE = flags.DEFINE_string('table', '', 'Where the table is written (default: <workdir>/results.md).')
_ONLY = flags.DEFINE_list('only', [], 'Cells to run, as fusion/backbones/scheme (default: the whole grid).')
_NUM_STEPS = flags.DEFINE_integer('num_steps', 200, 'Training steps per cell (and per pretraining run).')
_BACKBONE_INIT = flags.DEFINE_enum('backbone_init', 'pretrained', ['pretrained', 'random'],
                                   'Backbones of every cell: pretrained on the second tree, or random.')
_PRETRAIN_SEED = flags.DEFINE_integer('pretrain_seed', 1, 'Seed of the synthetic tree the backbones pretrain on.')

FUSIONS = {  # name -> (config file, extra overrides)
    'lstm': ('configs/lstm.py', []),
    'bilstm': ('configs/lstm.py', ['--config.model.bidirectional=True']),
    'self_attn': ('configs/self_attn.py', []),
    'cross_attn': ('configs/cross_attn.py', []),
}
BACKBONES = {  # spec rnn_attn 2.1/2.2: low = MobileFaceNet + Zhao19, high = InceptionResnetV1 + Zhao19
    'low': ['--config.model.visual_backbone=mobilefacenet'],
    'high': ['--config.model.visual_backbone=inceptionresnetv1'],
}
SCHEMES = ('frozen', 'end_to_end')


def _run(args: list[str], log: pathlib.Path) -> str:
  """Runs `python args` (its stderr appended to `log`); returns its stdout."""
  print('+', ' '.join(args), flush=True)
  log.parent.mkdir(parents=True, exist_ok=True)
  with log.open('a') as err:
    return subprocess.run([sys.executable, *args], check=True, stdout=subprocess.PIPE, stderr=err, text=True).stdout


def _pretrained(backbones: str, root: pathlib.Path, extra: list[str]) -> list[str]:
  """The `--config.model.pretrained.*` overrides of backbone set `backbones`: an end-to-end LSTM run on the
  synthetic tree of `--pretrain_seed` (trained and exported once)."""
  workdir = root / f'pretrain-{backbones}'
  out = workdir / 'backbones'
  files = {part: out / f'{part}.msgpack' for part in ('audio', 'visual')}
  if not all(f.exists() for f in files.values()):
    args = ['--config=configs/lstm.py', *BACKBONES[backbones], f'--config.train.num_steps={_NUM_STEPS.value}',
            f'--config.data.synthetic.seed={_PRETRAIN_SEED.value}', *extra]
    _run(['-m', 'affjax.main', *args, f'--workdir={workdir}'], workdir / 'log.txt')
    _run(['tools/export_backbones.py', *args, f'--workdir={workdir}', f'--out={out}'], workdir / 'log.txt')
  return [f'--config.model.pretrained.{part}={f}' for part, f in files.items()]


def _cell(fusion: str, backbones: str, scheme: str, root: pathlib.Path, extra: list[str]) -> dict:
  init = _BACKBONE_INIT.value
  workdir = root / f'{fusion}-{backbones}-{scheme}-{init}'
  config_file, fusion_args = FUSIONS[fusion]
  config = f'--config={config_file}' + (':frozen' if scheme == 'frozen' else '')
  weights = _pretrained(backbones, root, extra) if init == 'pretrained' else []
  args = [config, *fusion_args, *BACKBONES[backbones], *weights, f'--config.train.num_steps={_NUM_STEPS.value}',
          *extra]
  if scheme == 'frozen':
    out = _run(['tools/cache_features.py', *args, f'--out={root / f"features-{backbones}-{init}"}'],
               workdir / 'log.txt')
    args.append(out.strip().splitlines()[-1].split('with ', 1)[1])  # --config.data.features_dir=...
  metrics_file = workdir / 'eval' / 'validation' / 'metrics.json'
  if not metrics_file.exists():
    _run(['-m', 'affjax.main', *args, f'--workdir={workdir}'], workdir / 'log.txt')
  rows = [json.loads(line) for line in (workdir / 'scalars.jsonl').read_text().splitlines()]
  fps = [r['perf/frames_per_s'] for r in rows if 'perf/frames_per_s' in r]
  return dict(json.loads(metrics_file.read_text()), frames_per_s=statistics.median(fps), command=' '.join(args))


def main(argv):
  extra = argv[1:]  # anything after `--` is passed to every run
  root = pathlib.Path(_WORKDIR.value)
  cells = [c for c in itertools.product(FUSIONS, BACKBONES, SCHEMES) if not _ONLY.value or '/'.join(c) in _ONLY.value]
  header = (f'Device: {profiling.cpu_description()} (CPU; on GPUs the cells run there). {_NUM_STEPS.value} steps per '
            f'cell, seed 0, synthetic tree (default size), {_BACKBONE_INIT.value} backbones; frozen cells train from a '
            'feature cache, so their frames/s is the fusion alone. Rerun: '
            'python experiments/rnn_vs_attention/run_study.py '
            f'--workdir={root} --num_steps={_NUM_STEPS.value} --backbone_init={_BACKBONE_INIT.value}'
            + (' -- ' + ' '.join(extra) if extra else ''))
  lines = [header, '', '| fusion | backbones | scheme | CCC valence | CCC arousal | CCC mean | train frames/s |',
           '|---|---|---|---|---|---|---|']
  for cell in cells:
    r = _cell(*cell, root, extra)
    lines.append(f'| {cell[0]} | {cell[1]} | {cell[2]} | {r["ccc_valence"]:.3f} | {r["ccc_arousal"]:.3f} | '
                 f'{r["ccc_mean"]:.3f} | {r["frames_per_s"]:.1f} |')
    print(lines[-1], flush=True)
    pathlib.Path(_TABLE.value or root / 'results.md').write_text('\n'.join(lines) + '\n')  # after every cell


if __name__ == '__main__':
  app.run(main)
