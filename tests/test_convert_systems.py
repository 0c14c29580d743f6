"""Whole upstream models -> affjax run directories (`tools/convert_torch.py --network=<system> --out_workdir=RUN`):
references written with the upstream models' names and nesting on random weights, saved as their trainers save
them, converted through the CLI's function; the restored run's outputs against the reference, and `--mode=eval`
on the run."""
import functools

import jax
import numpy as np
import pytest

from affjax import checkpoint, converted_run, models, parallel
from affjax.data import pipeline, prepare
from affjax.models.backbones.audio1d import AUDIO_CNN_TABLES
from affjax.train import loop, optim, state as state_lib

import torch_checkpoints

torch = pytest.importorskip('torch')
tnn = torch.nn


def _time_distributed(module):
  """abaw3_rnn_attn's `TimeDistributed` / encoder wrappers: the wrapped module under `.model`."""
  wrapper = tnn.Module()
  wrapper.model = module
  return wrapper


class _KarasLSTM(tnn.Module):
  """abaw3_rnn_attn `AudioVisualRecurrentModel` (`rnn` / `birnn`): `audio_network` = TimeDistributed(
  AudioConvEncoder(Base)), `visual_network` = TimeDistributed(VisualConvEncoder(MobileFaceNet without its
  landmark head)), `seq2seq_model` = Sequential(ConcatFusion, Linear, GELU, RNNModel{rnn}), two linear heads."""

  def __init__(self, table, d: int, num_layers: int, bidirectional: bool):
    super().__init__()
    self.audio_network = _time_distributed(_time_distributed(torch_checkpoints.end2you_base(torch, table)))
    mobilefacenet = torch_checkpoints.upstream_mobilefacenet(torch)
    mobilefacenet.output_layer.linear = mobilefacenet.output_layer.bn = tnn.Identity()  # remove_output_layer()
    self.visual_network = _time_distributed(_time_distributed(mobilefacenet))
    rnn_model = tnn.Module()
    rnn_model.rnn = tnn.LSTM(d, d, num_layers, batch_first=True, bidirectional=bidirectional)
    self.seq2seq_model = tnn.Sequential(tnn.Identity(), tnn.Linear(table[-1].features + 512, d), tnn.GELU(), rnn_model)
    width = d * (2 if bidirectional else 1)
    self.linear_continuous, self.linear_categorical = tnn.Linear(width, 2), tnn.Linear(width, 24)

  def forward(self, windows, faces):
    """windows [B, T, W], faces [B, T, 112, 112, 3] in [0, 1] -> (va [B, T, 2], cat [B, T, 24])."""
    b, t = windows.shape[:2]
    audio = self.audio_network.model.model(windows.reshape(b * t, 1, -1)).mean(-1).reshape(b, t, -1)
    visual = self.visual_network.model.model.features(faces.reshape(b * t, *faces.shape[2:]).permute(0, 3, 1, 2))
    x = self.seq2seq_model[2](self.seq2seq_model[1](torch.cat([audio, visual.reshape(b, t, -1)], -1)))
    x, _ = self.seq2seq_model[3].rnn(x)
    return self.linear_continuous(x), self.linear_categorical(x)


def _av_batch(config, batch_size: int, seed: int) -> dict[str, np.ndarray]:
  """A random batch shaped like the pipeline's, frame t's audio window starting ~533 samples after frame t-1's."""
  batch = state_lib.example_batch(config, batch_size)
  rng = np.random.default_rng(seed)
  t = batch['mask'].shape[1]
  batch['faces'] = rng.integers(0, 256, batch['faces'].shape, dtype=np.uint8)
  batch['audio'] = rng.uniform(-1, 1, batch['audio'].shape).astype(np.float32)
  batch['audio_offsets'][:] = np.round(np.arange(t) * 16000 / 30).astype(np.int32)
  return batch


def _restored_apply(config_path, arg: str = ''):
  """The model of the run's config with the variables its checkpoint holds, applied in evaluation mode."""
  config = converted_run.load_config(config_path, arg)
  model = models.build_model(config.model)
  tx = optim.make_optimizer(config, models.param_labels(config.model))
  abstract = state_lib.initial_state(model, tx, config, parallel.make_mesh(), seed=config.seed + 1)
  checkpoints = checkpoint.Checkpointer(config_path.parent)
  try:
    state = checkpoints.restore(checkpoints.latest_step(), abstract)
  finally:
    checkpoints.close()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return config, jax.jit(functools.partial(model.apply, variables, train=False))


@pytest.mark.parametrize('audio, bidirectional', [('emo18', True)])
def test_karas_lstm_converts_into_a_run_that_matches_the_upstream_model(tiny_tree, tmp_path, audio, bidirectional):
  torch.manual_seed(0)
  net = _KarasLSTM(AUDIO_CNN_TABLES[audio], d=8, num_layers=2, bidirectional=bidirectional).eval()
  path = tmp_path / 'best.pth.tar'
  torch.save({'state_dict': net.state_dict(), 'optim_dict': {'state': {}, 'param_groups': []}, 'epoch': 5}, str(path))
  config_path, report = converted_run.write_run('lstm', str(path), str(tmp_path / 'run'))
  assert f"{audio} under 'audio_network.model.model.'" in report
  config, apply = _restored_apply(config_path, 'smoke')
  assert (config.model.audio_backbone, config.model.d_embedding, config.model.num_layers,
          config.model.bidirectional, config.model.aux_classes) == (audio, 8, 2, bidirectional, 24)
  batch = _av_batch(config, 2, seed=1)
  out = apply(batch)
  windows = np.stack([[a[o:o + config.model.audio_window] for o in offs]
                      for a, offs in zip(batch['audio'], batch['audio_offsets'])])
  with torch.no_grad():
    va, cat = net(torch.from_numpy(windows), torch.from_numpy(batch['faces'].astype(np.float32) / 255.0))
  for ours, theirs in ((out['va'], va), (out['cat'], cat)):
    ours, theirs = np.asarray(ours), theirs.numpy()
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-5

  _check_eval_writes_predictions(config_path, tiny_tree, tmp_path)


def _check_eval_writes_predictions(config_path, tiny_tree, tmp_path):
  """`--mode=eval` on the converted run (the tiny synthetic tree): one prediction row per annotation row."""
  config = converted_run.load_config(config_path, 'smoke')
  config.data.update(manual_dir=str(tiny_tree), records_dir=str(tmp_path / 'records'), test_list='va_test_set.txt')
  results = loop.evaluate_only(config, str(config_path.parent))
  assert np.isfinite(results['validation']['ccc_mean'])
  records = pipeline.open_partition(prepare.input_dir(config), 'validation', config)
  for video in records.videos:
    lines = (config_path.parent / 'predictions' / 'validation' / f'{video.name}.txt').read_text().splitlines()
    assert lines[0] == 'valence,arousal' and len(lines) - 1 == video.num_rows
