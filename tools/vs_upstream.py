"""affjax against the upstream PyTorch code itself: train step and inference, the same model sizes on both sides,
each side in its own process, steps alternating A, B, A, B; medians, ratios, machine load, peak resident memory.

  PYTHONPATH=. python tools/bench_throughput.py --upstream_dir=/work/upstream [--cases=cross_attn,cross_attn_frozen]

`--upstream_dir` holds checkouts of the upstream repositories, by their GitHub names: `abaw3_rnn_attn` and
`end2you` (VincentKaras/...) for the Karas et al. fusions. Nothing of theirs is copied into affjax: their model
classes are imported unmodified from that folder, with these import shims (in `_upstream_imports`):
- `end2you` is registered as a namespace package over `<upstream_dir>/end2you/end2you`, so that its `models`
  subpackage imports without the package `__init__`, which pulls in its data generators (moviepy, h5py, ...);
- `torchvision`, when it does not import (a wheel built for another torch), is replaced by a package whose
  `transforms.Normalize` is `(x - mean) / std` over channels (upstream uses it for pretrained backbones' input
  normalisation) and whose `models` names raise when called (imported by End2You's visual models, which these cases do not use);
- `facenet_pytorch` and `vggface2_pytorch` (the other visual backbones, unused by these cases) are empty modules
  when not installed.
and one setting: inference turns off PyTorch's fast path of `nn.MultiheadAttention`
(`torch.backends.mha.set_fastpath_enabled(False)`), which rejects the `need_weights=None` upstream passes.
The tool prints the commit of each repository it imported from (`git rev-parse HEAD`, or `--upstream_commits`
for exported trees without `.git`).

A train step is forward, loss, backward and optimiser update on one fixed batch already in memory: affjax's
jitted `train.step.make_train_step` with the config's optimiser; upstream the model in train mode, its own
`CCCLoss` (valence and arousal of the V/A head, the corrected arousal of spec rnn_attn bug 1) and
`torch.optim.AdamW` with the same hyperparameters. Inference is the eval-mode forward (`torch.inference_mode`).
Peak resident memory per step: the process's VmHWM after a step, reset before it (`/proc/self/clear_refs`);
it includes the process's resident baseline (interpreter, libraries, parameters).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import subprocess
import sys
import time
import types

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
PRECISION_ENV = 'AFFJAX_VS_UPSTREAM_PRECISION'  # JSON for load_config's `precision`, set by the parent
SETTLE_SECONDS = 1.0  # pause before each timed step
AUDIO_WINDOW = 10560  # int(16000 * 0.66) samples per frame
FPS = 30.0


@dataclasses.dataclass(frozen=True)
class Case:
  """One row: `config` (an affjax config file with its variants) against the upstream `upstream` builder, both
  at batch `batch` x `frames`; `mode` 'train' (a train step) or 'infer' (an eval forward)."""
  config: str
  upstream: str
  batch: int
  frames: int
  mode: str = 'train'
  overrides: tuple[tuple[str, object], ...] = ()


CASES = {
    'cross_attn': Case('cross_attn', 'karas_multv2', 4, 8),
    'cross_attn_frozen': Case('cross_attn:frozen', 'karas_multv2_frozen', 4, 8),
    'cross_attn_infer': Case('cross_attn', 'karas_multv2', 16, 8, mode='infer'),
    'self_attn': Case('self_attn', 'karas_selfattn', 4, 8),
    'lstm': Case('lstm', 'karas_rnn', 4, 8),
}


# ----------------------------------------------------------------------------- the upstream side (PyTorch)
def _upstream_imports(upstream_dir: pathlib.Path) -> None:
  """Makes the upstream model code importable unmodified (the shims of the module docstring)."""
  karas, end2you = upstream_dir / 'abaw3_rnn_attn', upstream_dir / 'end2you'
  for path in (karas, end2you):
    if not path.is_dir():
      raise FileNotFoundError(f'--upstream_dir={upstream_dir}: no {path.name}/ in it (a checkout of '
                              f'github.com/VincentKaras/{path.name}); see tools/vs_upstream.py')
  sys.path[:0] = [str(karas), str(end2you)]
  package = types.ModuleType('end2you')
  package.__path__ = [str(end2you / 'end2you')]
  sys.modules['end2you'] = package
  try:
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except Exception:  # pylint: disable=broad-except  (a wheel for another torch raises RuntimeError)
    for name in [m for m in sys.modules if m.startswith('torchvision')]:
      del sys.modules[name]
    sys.modules['torchvision'] = _torchvision_shim()
  for name in ('facenet_pytorch', 'vggface2_pytorch', 'vggface2_pytorch.models', 'vggface2_pytorch.models.resnet',
               'vggface2_pytorch.models.senet'):
    try:
      importlib.import_module(name)
    except ImportError:
      module = types.ModuleType(name)
      module.__path__ = []
      for attr in ('InceptionResnetV1', 'ResNet', 'resnet50', 'SENet', 'senet50', 'utils'):
        setattr(module, attr, None)
      sys.modules[name] = module


def _torchvision_shim() -> types.ModuleType:
  import torch  # pylint: disable=g-import-not-at-top

  class Normalize(torch.nn.Module):
    def __init__(self, mean, std):
      super().__init__()
      self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

    def forward(self, x):
      return (x - self.mean) / self.std

  module, transforms = types.ModuleType('torchvision'), types.ModuleType('torchvision.transforms')
  transforms.Normalize = Normalize
  module.__path__, module.transforms, module.models = [], transforms, types.ModuleType('torchvision.models')
  module.models.__getattr__ = _unavailable
  sys.modules.update({'torchvision.transforms': transforms, 'torchvision.models': module.models})
  return module


def _unavailable(name: str):
  if name.startswith('_'):
    raise AttributeError(name)

  def unavailable(*args, **kwargs):
    raise RuntimeError(f'{name}: torchvision does not import here; tools/vs_upstream.py only shims Normalize')
  return unavailable


def _karas_model(config, temporal_model: str):
  """abaw3_rnn_attn's AudioVisual{Attention,Recurrent}Network at the sizes of the affjax `config`."""
  from models.modules import audiovisual  # pylint: disable=g-import-not-at-top  (upstream, unmodified)
  m = config.model
  common = dict(audio_input_size=AUDIO_WINDOW, visual_input_size=config.data.image_size,
                audio_backbone=m.audio_backbone, visual_backbone=m.visual_backbone, temporal_model=temporal_model,
                visual_pretrained=False, audio_pretrained=False, batch_first=True, d_embedding=m.d_embedding,
                num_layers=m.num_layers, dropout=m.dropout, activation=m.act, output_names=['VA'])
  if temporal_model == 'rnn':
    return audiovisual.AudioVisualRecurrentModel(**common, bidirectional=m.get('bidirectional', False))
  extra = dict(num_heads=m.num_heads, d_feedforward=m.d_ff)
  if temporal_model.startswith('mult'):
    extra.update(num_crossaudio_layers=m.n_ca, num_crossvisual_layers=m.n_cv)
  return audiovisual.AudioVisualAttentionNetwork(**common, **extra)


UPSTREAM_TEMPORAL = {'karas_multv2': 'multv2', 'karas_multv2_frozen': 'multv2', 'karas_selfattn': 'selfattn',
                     'karas_rnn': 'rnn'}


def _upstream_runner(case: Case, config, upstream_dir: pathlib.Path):
  """A function running one upstream step on a fixed random batch, on the GPU when PyTorch sees one, under
  bfloat16 autocast when the affjax side computes in bfloat16 (`config.train.dtype`)."""
  import torch  # pylint: disable=g-import-not-at-top
  _upstream_imports(upstream_dir)
  from utils.losses_metrics import CCCLoss  # pylint: disable=g-import-not-at-top  (upstream, unmodified)
  torch.manual_seed(0)
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=config.train.dtype == 'bfloat16')
  sync = torch.cuda.synchronize if device.type == 'cuda' else lambda: None
  model = _karas_model(config, UPSTREAM_TEMPORAL[case.upstream]).to(device)
  b, t, s = case.batch, case.frames, config.data.image_size
  audio = (torch.rand(b, t, 1, AUDIO_WINDOW) * 2 - 1).to(device)
  faces = torch.rand(b, t, 3, s, s).to(device)
  labels = (torch.rand(b, t, 2) * 2 - 1).to(device)
  if case.mode == 'infer':
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)  # upstream passes need_weights=None, which the fast path rejects

    def infer():
      with torch.inference_mode(), autocast():
        out = model([audio, faces])['VA']
      sync()
      return out
    return infer
  if case.upstream.endswith('_frozen'):  # as upstream's freeze_extractors(): no gradients, still train mode
    model.audio_network.requires_grad_(False)
    model.visual_network.requires_grad_(False)
  model.train()
  o = config.optim
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.learning_rate,
                          betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
  ccc = CCCLoss()
  wv, wa = config.loss.ccc_weights

  def train():
    opt.zero_grad(set_to_none=True)
    with autocast():
      va = model([audio, faces])['VA'].float()
    loss = wv * ccc(va[..., 0], labels[..., 0]) + wa * ccc(va[..., 1], labels[..., 1])
    loss.backward()
    opt.step()
    return loss.item()
  return train


# ----------------------------------------------------------------------------- the affjax side
def load_config(case: Case, precision: dict[str, str] | None = None):
  """The case's affjax config; `precision` may set 'dtype' (train.dtype: float32 | bfloat16) and
  'attention_impl' (model.attention_impl of the attention fusions: xla | cudnn)."""
  name, _, variants = case.config.partition(':')
  config = importlib.import_module(f'configs.{name}').get_config(variants)
  config.train.batch_size = case.batch
  config.data.window = case.frames
  for field, value in case.overrides:
    section, key = field.split('.')
    config[section][key] = value
  precision = precision or {}
  if precision.get('dtype'):
    config.train.dtype = precision['dtype']
  if precision.get('attention_impl') and 'attention_impl' in config.model:
    config.model.attention_impl = precision['attention_impl']
  return config


def _affjax_batch(config, batch: int, frames: int) -> dict[str, np.ndarray]:
  """A random pipeline batch: faces, one audio segment per window with per-frame window offsets, labels, masks."""
  from affjax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  out = state_lib.example_batch(config, batch)
  out['faces'] = rng.integers(0, 256, out['faces'].shape, dtype=np.uint8)
  out['audio'] = rng.uniform(-1, 1, out['audio'].shape).astype(np.float32)
  starts = np.floor((np.arange(frames) + 0.5) * 16000 / FPS).astype(np.int32)  # window t centred on frame t
  out['audio_offsets'] = np.broadcast_to(starts, (batch, frames)).copy()
  return dict(out, labels=rng.uniform(-1, 1, (batch, frames, 2)).astype(np.float32),
              label_mask=np.ones((batch, frames), bool), face_mask=np.ones((batch, frames), bool))


def _affjax_runner(case: Case, config):
  import jax  # pylint: disable=g-import-not-at-top

  from affjax import models, parallel  # pylint: disable=g-import-not-at-top
  from affjax.train import optim, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh()
  model = models.build_model(config.model, config.compat)
  tx = optim.make_optimizer(config, models.param_labels(config.model))
  state = state_lib.initial_state(model, tx, config, mesh, seed=0)
  with jax.set_mesh(mesh):
    batch = parallel.to_global(_affjax_batch(config, case.batch, case.frames), mesh)
    if case.mode == 'infer':
      eval_step = step_lib.make_eval_step(model)
      return lambda: jax.block_until_ready(eval_step(state, batch))
    carry = [state, jax.device_put(step_lib.zero_accumulator(), parallel.replicated(mesh))]
    train_step = step_lib.make_train_step(model, tx, config)

    def train():
      with jax.set_mesh(mesh):
        carry[:] = train_step(*carry, batch)
        return jax.block_until_ready(carry[1])
    return train


# ----------------------------------------------------------------------------- worker processes
def _peak_rss_reset() -> bool:
  """Resets the peak RSS to the current RSS; False where the kernel (or sandbox) does not, so that the peak
  reported is the process's lifetime peak, including the build."""
  try:
    pathlib.Path('/proc/self/clear_refs').write_text('5')
  except OSError:
    return False
  status = _proc_status_kib()
  return 'VmHWM' in status and status['VmHWM'] <= status['VmRSS'] + 4096


def _proc_status_kib() -> dict[str, int]:
  fields = {}
  for line in pathlib.Path('/proc/self/status').read_text().splitlines():
    if line.startswith(('VmHWM:', 'VmRSS:')):
      fields[line.split(':')[0]] = int(line.split()[1])
  return fields


def _peak_rss_mib() -> float:
  status = _proc_status_kib()
  if 'VmHWM' in status:
    return status['VmHWM'] / 1024
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(side: str, case_name: str, upstream_dir: str, threads: int) -> None:
  """Builds one side of a case, then runs a step per 'step' line on stdin and answers one JSON line per step."""
  reply = os.fdopen(os.dup(1), 'w')  # the protocol's channel; everything else printed goes to stderr
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  case = CASES[case_name]
  config = load_config(case, json.loads(os.environ.get(PRECISION_ENV, '{}')))
  if side == 'upstream':
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    run = _upstream_runner(case, config, pathlib.Path(upstream_dir))
  else:
    from affjax.train import loop  # pylint: disable=g-import-not-at-top
    loop.start_process(config)  # as every affjax command starts (the CPU runtime settings included)
    run = _affjax_runner(case, config)
  run()  # compilation / first-call allocation
  print(json.dumps({'ready': True}), file=reply, flush=True)
  for line in sys.stdin:
    if line.strip() != 'step':
      break
    per_step = _peak_rss_reset()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    print(json.dumps({'seconds': seconds, 'peak_rss_mib': _peak_rss_mib(), 'peak_per_step': per_step}), file=reply,
          flush=True)


class _Worker:
  """A worker process of one side; `root` is the tree its `affjax` and `configs` are imported from."""

  def __init__(self, side: str, case: str, upstream_dir: str, threads: int, root: pathlib.Path,
               precision: dict[str, str]):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get('PYTHONPATH', '')]))
    env[PRECISION_ENV] = json.dumps(precision)
    self.side = side
    self.proc = subprocess.Popen(
        [sys.executable, __file__, side, case, upstream_dir, str(threads)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    self._read()  # ready

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'the {self.side} worker died (exit {self.proc.wait()}); its stderr is above')
    return json.loads(line)

  def step(self) -> dict:
    self.proc.stdin.write('step\n')
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


def commit(path: pathlib.Path, given: dict[str, str]) -> str:
  if path.name in given:
    return given[path.name][:10]
  try:
    return subprocess.run(['git', '-C', str(path), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                          check=True).stdout.strip()[:10]
  except (subprocess.CalledProcessError, FileNotFoundError):
    return 'unknown'


def run_case(name: str, upstream_dir: str, rounds: int, threads: int, baseline_dir: str = '',
             precision: dict[str, str] | None = None) -> dict:
  """Alternates one affjax step and one step of the other side (upstream, or with `baseline_dir` the affjax of
  that tree) for `rounds` rounds, both built and warmed up first."""
  other = ('affjax', pathlib.Path(baseline_dir)) if baseline_dir else ('upstream', REPO)
  precision = precision or {}
  workers = {'affjax': _Worker('affjax', name, upstream_dir, threads, REPO, precision),
             'other': _Worker(other[0], name, upstream_dir, threads, other[1], precision)}
  try:
    for w in workers.values():  # a second untimed step each (allocator, caches)
      w.step()
    times, peaks, loads, per_step = {s: [] for s in workers}, {s: 0.0 for s in workers}, [], True
    for _ in range(rounds):
      for side, w in workers.items():
        time.sleep(SETTLE_SECONDS)  # lets the other side's threads go idle (OpenMP spins after a parallel region)
        out = w.step()
        times[side].append(out['seconds'])
        peaks[side] = max(peaks[side], out['peak_rss_mib'])
        per_step &= out['peak_per_step']
      loads.append(os.getloadavg()[0])
  finally:
    for w in workers.values():
      w.close()
  med = {s: float(np.median(t)) for s, t in times.items()}
  return dict(case=name, affjax=med['affjax'], other=med['other'], ratio=med['affjax'] / med['other'],
              affjax_mib=peaks['affjax'], other_mib=peaks['other'], peak_per_step=per_step,
              load=(min(loads), max(loads)))


def describe(case_name: str) -> str:
  c = CASES[case_name]
  what = 'train step' if c.mode == 'train' else 'inference'
  name, _, variants = c.config.partition(':')
  return f'{what}, configs/{name}.py{":" + variants if variants else ""}, batch {c.batch} x {c.frames}'


def main_upstream(upstream_dir: str, case_names: list[str], rounds: int, threads: int, commits: dict[str, str],
                  baseline_dir: str = '', precision: dict[str, str] | None = None) -> None:
  """Prints the markdown table (the `--upstream_dir` mode of tools/bench_throughput.py); with `baseline_dir`
  the other side is that tree's affjax instead of upstream."""
  import torch  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from affjax import profiling  # pylint: disable=g-import-not-at-top
  unknown = [c for c in case_names if c not in CASES]
  if unknown:
    raise ValueError(f'--cases: unknown {unknown}; known: {list(CASES)}')
  up = pathlib.Path(upstream_dir)
  other = f'baseline {baseline_dir}' if baseline_dir else 'upstream ' + ', '.join(
      f'{p.name} {commit(p, commits)}' for p in sorted(up.iterdir()) if p.is_dir())
  precision = precision or {}
  print(f'device: {jax.devices()[0].device_kind} ({profiling.cpu_description()}), {precision or "float32"}, '
        f'{threads} threads per side; jax {jax.__version__}, torch {torch.__version__}; affjax {commit(REPO, {})}; {other}; medians of '
        f'{rounds} alternating rounds after 2 untimed steps per side', flush=True)
  label = 'baseline' if baseline_dir else 'upstream'
  print(f'| case | {label} s/step | affjax s/step | affjax / {label} | {label} peak RSS MiB | affjax peak RSS MiB '
        '| load (1 min) |')
  print('|---|---|---|---|---|---|---|', flush=True)
  for name in case_names:
    r = run_case(name, upstream_dir, rounds, threads, baseline_dir, precision)
    lifetime = '' if r['peak_per_step'] else ' (process lifetime: this kernel does not reset the peak)'
    print(f"| {describe(name)} | {r['other']:.3f} | {r['affjax']:.3f} | {r['ratio']:.2f} | "
          f"{r['other_mib']:.0f}{lifetime} | {r['affjax_mib']:.0f}{lifetime} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |",
          flush=True)


if __name__ == '__main__':
  worker(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
