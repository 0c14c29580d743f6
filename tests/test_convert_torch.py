"""tools/convert_torch.py as a user runs it: a checkpoint saved the way upstream training code saves it, the CLI in a
subprocess, its report and its errors; the checkpoint wrappers `read_torch_checkpoint` accepts."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from affjax.models import converters, torch_convert
from affjax.models.backbones.audio1d import AUDIO_CNN_TABLES

import torch_checkpoints

torch = pytest.importorskip('torch')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _end2you_training_checkpoint(table) -> dict:
  """End2You's trainer output for an `AudioRNNModel` trained under DataParallel: {'state_dict': ...,
  'optim_dict': ..., 'epoch': ...}, the `Base` under `module.audio_model.model.network.<2i>.{0,1}`."""
  tnn = torch.nn
  audio_model, rnn_model = tnn.Module(), tnn.Module()
  audio_model.model = torch_checkpoints.end2you_base(torch, table)
  rnn_model.audio_model, rnn_model.linear = audio_model, tnn.Linear(table[-1].features, 2)
  model = tnn.DataParallel(rnn_model)
  return {'state_dict': model.state_dict(), 'optim_dict': {'state': {}, 'param_groups': []}, 'epoch': 7}


def _run_cli(*args):
  return subprocess.run([sys.executable, 'tools/convert_torch.py', *args], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu'), timeout=120, check=False)


def test_cli_converts_an_end2you_checkpoint_and_reports_what_it_left(tmp_path):
  table = AUDIO_CNN_TABLES['emo18']
  saved = _end2you_training_checkpoint(table)
  torch.save(saved, str(tmp_path / 'best.pth.tar'))
  out = tmp_path / 'emo18.msgpack'
  result = _run_cli('--network=emo18', f'--checkpoint={tmp_path / "best.pth.tar"}', f'--out={out}')
  assert result.returncode == 0, result.stderr
  assert "emo18: read under 'audio_model.model.'" in result.stdout
  assert '2 tensors outside' in result.stdout and 'linear.bias, linear.weight' in result.stdout
  variables = torch_convert.read_variables(str(out))
  sd = {k.removeprefix('module.'): v.numpy() for k, v in saved['state_dict'].items()}
  for i in range(len(table)):  # every block, converted from the tensors of its upstream name
    np.testing.assert_array_equal(variables['params'][f'conv{i}']['kernel'],
                                  sd[f'audio_model.model.network.{2 * i}.0.weight'].transpose(2, 1, 0))
    np.testing.assert_array_equal(variables['batch_stats'][f'bn{i}']['var'],
                                  sd[f'audio_model.model.network.{2 * i}.1.running_var'])
  assert (jax.tree.structure(variables)
          == jax.tree.structure(converters.convert_checkpoint('emo18', str(tmp_path / 'best.pth.tar')).variables))
  with pytest.raises(ValueError, match=r'best.pth.tar has no zhao19 .* Pnetwork.6.1.running_var'):
    converters.convert_checkpoint('zhao19', str(tmp_path / 'best.pth.tar'))


def test_read_torch_checkpoint_unwraps_upstream_formats(tmp_path):
  """RJCA's fusion checkpoints are {'net': ..., 'best_Val_accV': ...}; DataParallel adds `module.`."""
  linear = torch.nn.Linear(3, 2)
  for name, saved in [('bare.pth', linear.state_dict()),
                      ('rjca.pt', {'net': linear.state_dict(), 'best_Val_accV': 0.4}),
                      ('dp.pth.tar', {'state_dict': torch.nn.DataParallel(linear).state_dict(), 'epoch': 1})]:
    torch.save(saved, str(tmp_path / name))
    read = torch_convert.read_torch_checkpoint(str(tmp_path / name))
    assert sorted(read) == ['bias', 'weight'], name
    np.testing.assert_array_equal(read['weight'], linear.weight.detach().numpy())
  torch.save({'epoch': 3, 'optimizer': {}}, str(tmp_path / 'no_weights.pth'))
  with pytest.raises(ValueError, match=r"no_weights.pth: expected a PyTorch state dict .* got a dict with \['epoch', "
                                       r"'optimizer'\]"):
    torch_convert.read_torch_checkpoint(str(tmp_path / 'no_weights.pth'))
