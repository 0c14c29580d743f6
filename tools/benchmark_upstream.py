"""The upstream side of tools/benchmark.py: each system's reference PyTorch model, imported unmodified from a folder
of upstream checkouts (`--upstream_dir`, by their GitHub names), built at the sizes of the affjax config, with a
train step (forward, loss, backward, optimiser update on one fixed random batch) and an inference (eval forward).

Per affjax config, the upstream repository and what a step runs:
- cross_attn, self_attn, lstm: `abaw3_rnn_attn` + `end2you`, `models.modules.audiovisual.AudioVisualAttentionNetwork`
  / `AudioVisualRecurrentModel` (`:frozen`: its extractors without gradients, as `freeze_extractors()`),
  `utils.losses_metrics.CCCLoss`, AdamW;
- rjca (`:jca,frozen` at 112 px, SIZES): `RecurrentJointAttentionwithLSTMs`, `models.tsav.TwoStreamAuralVisualModel`
  frozen in eval mode and run per window under `no_grad` (as `train.py`), then `models.orig_cam.CAM`, the CCC of
  valence plus arousal, Adam over CAM;
- lfan (the paper's IR-50 (3, 4, 14, 3), SIZES): `ABAW2`, `model.model.my_2d1ddy` in train mode,
  `base.parameter_control.ParamControl` releasing `model.released` IR-50 groups as at the start of training,
  `base.loss_function.CCCLoss`, Adam with coupled weight decay over the trainable parameters (`base/trainer.py`);
- sparse_e2e (`:dense,full`, SIZES): `Multimodal-End2end-Sparse`, `src.models.e2e.MME2E`'s audio-visual path
  (`normalize`, `V`, `v_flatten`, `v_transformer`, `v_out`, `A`, `a_flatten`, `a_transformer`, `a_out`,
  `weighted_fusion`, called as its forward calls them, one [CLS] output per window of tokens), squared error of
  the window's mean V/A (it classifies utterances with BCE; the loss is a negligible share), Adam.

Import shims (nothing of theirs is copied or edited):
- `end2you` is a namespace package over `<upstream_dir>/end2you/end2you`, so that its `models` subpackage imports
  without the package `__init__`, which pulls in its data generators (moviepy, h5py, ...);
- `torchvision`, when it does not import (a wheel built for another torch: here 0.28.0+cu130 beside torch
  2.13.0+cpu), is imported without `torchvision._meta_registrations` (fake kernels of its C++ operators, which such
  a wheel lacks; the models are plain Python), and failing that replaced by a package whose `transforms.Normalize`
  is `(x - mean) / std` over channels and whose `models` names raise when called;
- `facenet_pytorch` and `vggface2_pytorch` are empty modules when not installed (Karas: unused visual backbones;
  sparse: `MTCNN`, the face detector of MME2E's forward, which the benchmark does not run: affjax's input is face
  crops too);
- sparse: `src.models.e2e_t` (ALBERT, downloaded from the Hub at construction) is a module whose `MME2E_T` is an empty
  `nn.Module`: the text modality is not part of the audio-visual model;
- rjca: torchvision's `r2plus1d_18` / `resnet18` are called with `weights=None` (TSAV asks for the Kinetics download;
  the speed does not depend on the weights); `TwoStreamAuralVisualModel.forward` ends in a `Linear(1024, 17)` over
  25 600 features, which raises once its avgpool is removed, and `train.py` discards that output, so its
  `audio_model` and `video_model` are called as its forward calls them; the loss is `losses/CCC.py` (`main.py`'s
  `losses/loss.py` CCCLoss puts its bins on CUDA when built);
- lfan: `my_2d1ddy.init()` loads its IR-50 from `<root_dir>/<name>.pth`: a random `my_res50` state dict written to
  a temporary folder; its VGGish and MFCC inputs are features (affjax computes the MFCC from the audio inside its step);
- inference turns off PyTorch's fast path of `nn.MultiheadAttention` (`torch.backends.mha.set_fastpath_enabled`),
  which rejects the `need_weights=None` the Karas models pass.
No extra pip packages are needed beyond torch and torchvision.
"""
from __future__ import annotations

import dataclasses
import importlib
import pathlib
import sys
import tempfile
import types
from typing import Callable

AUDIO_WINDOW = 10560  # int(16000 * 0.66) samples per frame (Karas et al.)
REPOS = {'cross_attn': ('abaw3_rnn_attn', 'end2you'), 'self_attn': ('abaw3_rnn_attn', 'end2you'),
         'lstm': ('abaw3_rnn_attn', 'end2you'), 'rjca': ('RecurrentJointAttentionwithLSTMs',), 'lfan': ('ABAW2',),
         'sparse_e2e': ('Multimodal-End2end-Sparse',)}


@dataclasses.dataclass
class Upstream:
  """A built upstream model: `forward()` on its fixed inputs, `loss(outputs)`, the optimiser of its trainable
  parameters, and `train_mode(model)` (what its training loop sets: usually `model.train()`)."""
  model: object
  forward: Callable[[], object]
  loss: Callable[[object], object]
  optimizer: object
  train_mode: Callable[[object], None] = lambda model: model.train()


def repositories(system: str) -> tuple[str, ...]:
  if system not in REPOS:
    raise ValueError(f'--upstream_dir: no upstream model for configs/{system}.py; known: {sorted(REPOS)}')
  return REPOS[system]


def _require(upstream_dir: pathlib.Path, system: str) -> list[pathlib.Path]:
  paths = [upstream_dir / name for name in repositories(system)]
  for path in paths:
    if not path.is_dir():
      raise FileNotFoundError(f'--upstream_dir={upstream_dir}: no {path.name}/ in it (a checkout of the upstream '
                              f'repository {path.name}); see tools/benchmark_upstream.py')
  return paths


SIZES = {  # what the upstream code hard-codes (config field: value), and the rows that match it
    'rjca': ({'model.num_iterations': 1, 'model.frozen': ('audio', 'visual'), 'data.image_size': 112,
              'data.num_clips': 16, 'model.features': 512},
             '--system=rjca:jca,frozen --set=data.image_size=112 --set=data.num_clips=16 (CAM: DCNLayer(512, 512, 1, .) '
             'with 16-clip keys, 49 positions, frozen TSAV backbones)'),
    'lfan': ({'model.ir50_units': (3, 4, 14, 3), 'data.crop_size': 40, 'model.visual_channels': (128,) * 4,
              'model.follower_channels': (32,) * 4, 'model.fusion_dim': 32, 'model.followers': ('vggish', 'mfcc'),
              'model.kernel_size': 5},
             "--system=lfan --set='model.ir50_units=(3,4,14,3)' (my_2d1ddy builds the paper's IR-50 at 40 x 40)"),
    'sparse_e2e': ({'model.sparse': False, 'model.width': 64, 'model.mlp_hidden': 1024, 'model.d_ff': 2048,
                    'data.image_size': 48},
                   '--system=sparse_e2e:dense,full (MME2E: 64-channel VGG trunks, MLP 1024, Transformer FF 2048, '
                   '48 px faces)'),
}


def check(config, system: str, mode: str, upstream_dir: str) -> None:
  """Raises, before anything is built, where `system` has no upstream side for `mode` or `upstream_dir` lacks its
  checkouts, or where its config differs from a size the upstream code hard-codes (naming the field and the fix;
  the other sizes are built from the config)."""
  if mode not in ('train', 'infer'):
    raise ValueError(f'--mode={mode} has no upstream side (train and infer have); use --baseline_dir to compare '
                     'two affjax trees')
  _require(pathlib.Path(upstream_dir), config.model.name)
  expected, fix = SIZES.get(config.model.name, ({}, ''))
  for field, want in expected.items():
    section, key = field.split('.')
    have = config[section].get(key)
    have = tuple(have) if isinstance(have, (list, tuple)) else have
    have = tuple(sorted(have)) if key == 'frozen' else have
    if have != want:
      raise ValueError(f'--system={system}: config.{field}={have!r}, but the upstream model hard-codes {want!r}; '
                       f'use {fix}')


def _stub_modules(names: tuple[str, ...], attrs: tuple[str, ...]) -> None:
  for name in names:
    try:
      importlib.import_module(name)
    except ImportError:
      module = types.ModuleType(name)
      module.__path__ = []
      for attr in attrs:
        setattr(module, attr, None)
      sys.modules[name] = module


def _torchvision_or_shim() -> None:
  """torchvision; where its wheel was built for another torch (its C++ operators missing), without the fake-kernel
  registrations of those operators (its models are plain Python), else the Normalize-only shim."""
  for attempt in ('as installed', 'without operator registrations'):
    try:
      import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      return
    except Exception:  # pylint: disable=broad-except  (a wheel for another torch raises RuntimeError)
      for name in [m for m in sys.modules if m.startswith('torchvision')]:
        del sys.modules[name]
      if attempt == 'as installed':
        sys.modules['torchvision._meta_registrations'] = types.ModuleType('torchvision._meta_registrations')
  sys.modules['torchvision'] = _torchvision_shim()


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
    raise RuntimeError(f'{name}: torchvision does not import here; tools/benchmark_upstream.py only shims Normalize')
  return unavailable


# ----------------------------------------------------------------------------- Karas et al. (three fusions)
KARAS_TEMPORAL = {'cross_attn': 'multv2', 'self_attn': 'selfattn', 'lstm': 'rnn'}


def _karas(config, inputs, torch, device) -> Upstream:
  karas, end2you = _require(inputs.upstream_dir, config.model.name)
  sys.path[:0] = [str(karas), str(end2you)]
  package = types.ModuleType('end2you')
  package.__path__ = [str(end2you / 'end2you')]
  sys.modules['end2you'] = package
  _torchvision_or_shim()
  _stub_modules(('facenet_pytorch', 'vggface2_pytorch', 'vggface2_pytorch.models', 'vggface2_pytorch.models.resnet',
                 'vggface2_pytorch.models.senet'),
                ('InceptionResnetV1', 'ResNet', 'resnet50', 'SENet', 'senet50', 'utils'))
  from models.modules import audiovisual  # pylint: disable=g-import-not-at-top  (upstream, unmodified)
  from utils.losses_metrics import CCCLoss  # pylint: disable=g-import-not-at-top  (upstream, unmodified)
  m, temporal = config.model, KARAS_TEMPORAL[config.model.name]
  common = dict(audio_input_size=AUDIO_WINDOW, visual_input_size=config.data.image_size,
                audio_backbone=m.audio_backbone, visual_backbone=m.visual_backbone, temporal_model=temporal,
                visual_pretrained=False, audio_pretrained=False, batch_first=True, d_embedding=m.d_embedding,
                num_layers=m.num_layers, dropout=m.dropout, activation=m.act, output_names=['VA'])
  if temporal == 'rnn':
    model = audiovisual.AudioVisualRecurrentModel(**common, bidirectional=m.get('bidirectional', False))
  else:
    extra = dict(num_heads=m.num_heads, d_feedforward=m.d_ff)
    if temporal.startswith('mult'):
      extra.update(num_crossaudio_layers=m.n_ca, num_crossvisual_layers=m.n_cv)
    model = audiovisual.AudioVisualAttentionNetwork(**common, **extra)
  model = model.to(device)
  for part in m.get('frozen', ()):  # as upstream's freeze_extractors(): no gradients, still train mode
    getattr(model, f'{part}_network').requires_grad_(False)
  b, t, s = inputs.batch, inputs.frames, config.data.image_size
  audio = (torch.rand(b, t, 1, AUDIO_WINDOW) * 2 - 1).to(device)
  faces = torch.rand(b, t, 3, s, s).to(device)
  labels = inputs.labels(b, t)
  ccc, (wv, wa) = CCCLoss(), config.loss.ccc_weights
  torch.backends.mha.set_fastpath_enabled(False)  # upstream passes need_weights=None, which the fast path rejects
  o = config.optim
  optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.learning_rate,
                                betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
  return Upstream(model, lambda: model([audio, faces])['VA'].float(),
                  lambda va: wv * ccc(va[..., 0], labels[..., 0]) + wa * ccc(va[..., 1], labels[..., 1]), optimizer)


# ----------------------------------------------------------------------------- RJCA (Praveen et al.)
def _rjca(config, inputs, torch, device) -> Upstream:
  (repo,) = _require(inputs.upstream_dir, 'rjca')
  sys.path.insert(0, str(repo))
  _torchvision_or_shim()
  import torchvision  # pylint: disable=g-import-not-at-top
  for name in ('r2plus1d_18',):
    setattr(torchvision.models.video, name, _without_download(getattr(torchvision.models.video, name)))
  torchvision.models.resnet18 = _without_download(torchvision.models.resnet18)
  from losses.CCC import CCC  # pylint: disable=g-import-not-at-top  (upstream, unmodified)
  from models.orig_cam import CAM  # pylint: disable=g-import-not-at-top
  from models.tsav import TwoStreamAuralVisualModel  # pylint: disable=g-import-not-at-top
  backbones = TwoStreamAuralVisualModel(num_channels=3).to(device)  # main.py: 4-channel stem cut to 3 channels
  backbones.requires_grad_(False)
  cam = CAM().to(device)
  b, clips, s = inputs.batch, config.data.num_clips, config.data.image_size
  visual = torch.rand(b, clips, 3, 8, s, s).to(device)  # [b, seq_t, c, subseq_t, h, w] as train.py
  audio = torch.rand(b, clips, 1, 64, config.data.audio_frames).to(device)  # 64-mel patches per clip
  labels = inputs.labels(b, clips)

  def forward():
    with torch.no_grad():  # train.py: the frozen TSAV per window, in eval mode
      audio_feats = torch.stack([backbones.audio_model(audio[i]) for i in range(b)])
      visual_feats = torch.stack([backbones.video_model(visual[i]) for i in range(b)])
    return torch.stack(cam(audio_feats, visual_feats), -1)

  ccc = CCC()

  def train_mode(model):
    model.train()
    backbones.eval()

  optimizer = torch.optim.Adam(cam.parameters(), config.optim.learning_rate)
  model = torch.nn.ModuleDict(dict(backbones=backbones, cam=cam))
  return Upstream(model, forward, lambda va: ccc(va[..., 0], labels[..., 0]) + ccc(va[..., 1], labels[..., 1]),
                  optimizer, train_mode)


def _without_download(build):
  def build_random(pretrained=False, **kwargs):
    del pretrained
    return build(weights=None, **kwargs)
  return build_random


# ----------------------------------------------------------------------------- LFAN (Zhang et al.)
def _lfan(config, inputs, torch, device) -> Upstream:
  (repo,) = _require(inputs.upstream_dir, 'lfan')
  sys.path.insert(0, str(repo))
  from base.loss_function import CCCLoss  # pylint: disable=g-import-not-at-top  (upstream, unmodified)
  from base.parameter_control import ParamControl  # pylint: disable=g-import-not-at-top
  from model.model import my_2d1ddy, my_res50  # pylint: disable=g-import-not-at-top
  m = config.model
  with tempfile.TemporaryDirectory() as root:
    torch.save(my_res50(use_pretrained=False).state_dict(), pathlib.Path(root) / 'ir50.pth')
    model = my_2d1ddy(backbone_state_dict='ir50', channels=list(m.visual_channels), kernel_size=m.kernel_size,
                      dropout=m.tcn_dropout, output_dim=1 if m.emotion in ('valence', 'arousal') else 2, root_dir=root)
    model.init()
  model = model.to(device)
  release = ParamControl(types.SimpleNamespace(model=model, init_optimizer_and_scheduler=lambda: None),
                         release_count=m.released)
  for _ in range(m.released):  # group 1 (the head) at epoch 0, then stage 4, then the last stage-3 units
    release.release_param()
  optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.optim.learning_rate,
                               weight_decay=config.optim.weight_decay)  # base/trainer.py
  b, t, s = inputs.batch, inputs.frames, config.data.crop_size
  faces = torch.rand(b, t, 3, s, s).to(device)
  vggish, mfcc = torch.randn(b, t, 128).to(device), torch.randn(b, t, 39).to(device)
  labels = inputs.labels(b, t)[..., :2 if m.emotion == 'both' else 1]
  ccc = CCCLoss()
  return Upstream(model, lambda: model(faces, vggish, mfcc), lambda out: ccc(labels, out), optimizer)


# ----------------------------------------------------------------------------- sparse_e2e (Dai et al.), dense path
def _sparse(config, inputs, torch, device) -> Upstream:
  (repo,) = _require(inputs.upstream_dir, 'sparse_e2e')
  sys.path.insert(0, str(repo))
  _torchvision_or_shim()
  _stub_modules(('facenet_pytorch',), ('MTCNN',))
  sys.modules['facenet_pytorch'].MTCNN = lambda *args, **kwargs: None  # the face detector, not run (docstring)
  text = types.ModuleType('src.models.e2e_t')
  text.MME2E_T = lambda *args, **kwargs: torch.nn.Module()
  sys.modules['src.models.e2e_t'] = text
  from src.models.e2e import MME2E  # pylint: disable=g-import-not-at-top  (upstream, unmodified)
  m = config.model
  model = MME2E(dict(num_emotions=2, modalities='va', feature_dim=256, trans_nlayers=m.num_layers,
                     trans_nheads=m.num_heads, trans_dim=m.d_model, text_model_size='base'), device).to(device)
  b, t, s = inputs.batch, inputs.frames, config.data.image_size
  faces = (torch.rand(b * t, 3, s, s) * 255).to(device)
  specs = torch.randn(b * t, 1, 128, 32).to(device)  # one 128-mel x 32-frame patch per token
  targets, lens = inputs.labels(b, t).mean(1), [t] * b

  def forward():  # MME2E.forward's audio-visual path on face crops: one [CLS] output per window
    faces_out = model.v_flatten(model.V(model.normalize(faces)).flatten(start_dim=1))
    faces_out = model.v_out(model.v_transformer(faces_out, lens, get_cls=True))
    specs_out = specs
    for a_module in model.A:
      specs_out = a_module(specs_out)
    specs_out = model.a_out(model.a_transformer(model.a_flatten(specs_out.flatten(start_dim=1)), lens, get_cls=True))
    return model.weighted_fusion(torch.stack([faces_out, specs_out], dim=-1)).squeeze(-1)

  # The window's mean V/A by squared error (upstream classifies utterances with BCE; the loss is a negligible share)
  optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.learning_rate)
  return Upstream(model, forward, lambda va: ((va - targets) ** 2).mean(), optimizer)


BUILDERS = {'cross_attn': _karas, 'self_attn': _karas, 'lstm': _karas, 'rjca': _rjca, 'lfan': _lfan,
            'sparse_e2e': _sparse}


@dataclasses.dataclass
class Inputs:
  """What every builder needs: the checkouts, the batch and its time steps, and a labels maker."""
  upstream_dir: pathlib.Path
  batch: int
  frames: int
  labels: Callable


def build(config, mode: str, upstream_dir: str, threads: int):
  """(run, info) for tools/benchmark.py's worker: run() does one train step or inference of the upstream model of
  `config.model.name` (on the GPU when PyTorch sees one, under bfloat16 autocast when the affjax side computes in
  bfloat16); info: parameter counts."""
  import torch  # pylint: disable=g-import-not-at-top
  check(config, config.model.name, mode, upstream_dir)
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  view = config.data.get('view', 'frames')
  frames = config.data.num_clips if view == 'clips' else config.data.window
  inputs = Inputs(pathlib.Path(upstream_dir), config.train.batch_size, frames,
                  lambda b, t: (torch.rand(b, t, 2) * 2 - 1).to(device))
  built = BUILDERS[config.model.name](config, inputs, torch, device)
  autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=config.train.dtype == 'bfloat16')
  sync = torch.cuda.synchronize if device.type == 'cuda' else lambda: None
  params = list(built.model.parameters())
  info = dict(params=sum(p.numel() for p in params), trainable=sum(p.numel() for p in params if p.requires_grad),
              framework=f'torch {torch.__version__}')
  if mode == 'infer':
    built.model.eval()

    def infer():
      with torch.inference_mode(), autocast():
        built.forward()
      sync()
    return infer, info
  built.train_mode(built.model)

  def train():
    built.optimizer.zero_grad(set_to_none=True)
    with autocast():
      outputs = built.forward()
    loss = built.loss(outputs.float())
    loss.backward()
    built.optimizer.step()
    sync()
    return None
  return train, info
