"""RJCA backbones: ResNet-18 (1-channel) and R(2+1)D-18 against torchvision's networks with converted weights."""
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax.models import converters
from affjax.models.backbones import resnet
from affjax.models.torch_convert import StateDictReader

import torch_checkpoints

KEY = jax.random.key(0, impl='unsafe_rbg')


@pytest.fixture(scope='module')
def torchvision():
  torch = pytest.importorskip('torch')
  tv = torch_checkpoints.import_torchvision()
  torch.manual_seed(0)
  return torch, tv


def _randomise_batch_norms(torch, net):
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
        m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
  return net.eval()


def _state_dict(net):
  return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def _relative_error(out, expected):
  return float(np.abs(out - expected).max() / np.abs(expected).max())


def _param_count(model, shape):
  shapes = jax.eval_shape(functools.partial(model.init, train=False), KEY, jax.ShapeDtypeStruct(shape, jnp.float32))
  return sum(math.prod(p.shape) for p in jax.tree.leaves(shapes['params'])), shapes


@pytest.fixture(scope='module')
def tsav_checkpoint(torchvision, tmp_path_factory):
  """A checkpoint as RJCA loads its backbones: TSAV saved as {'state_dict': ...} (`torch_checkpoints.tsav`).
  Returns (path, the audio ResNet, the video R(2+1)D)."""
  torch, tv = torchvision
  tsav = _randomise_batch_norms(torch, torch_checkpoints.tsav(torch, tv))
  path = tmp_path_factory.mktemp('tsav') / 'TSAV_Sub4_544k.pth.tar'
  torch.save({'state_dict': tsav.state_dict(), 'epoch': 9}, str(path))
  return str(path), tsav.audio_model.resnet, tsav.video_model.r2plus1d


@pytest.mark.parametrize('conv_impl', ['xla', 'taps'])
def test_resnet18_audio_matches_torchvision(torchvision, tsav_checkpoint, conv_impl):
  torch, _ = torchvision
  path, net, _ = tsav_checkpoint
  x = np.random.default_rng(0).standard_normal((2, 64, 40, 1)).astype(np.float32)  # [N, mels, frames, 1]
  with torch.no_grad():
    t = torch.tensor(x.transpose(0, 3, 1, 2))
    t = net.maxpool(net.relu(net.bn1(net.conv1(t))))
    expected = net.layer4(net.layer3(net.layer2(net.layer1(t)))).numpy().transpose(0, 2, 3, 1)
  conversion = converters.convert_checkpoint('resnet18_audio', path)
  assert conversion.prefix == 'audio_model.resnet.'
  assert {k.split('.')[0] for k in conversion.outside_prefix} == {'video_model', 'fc'}
  variables = conversion.variables
  model = resnet.ResNet18(conv_impl=conv_impl)
  count, abstract = _param_count(model, x.shape)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, abstract)
  assert count == sum(p.numel() for n, p in net.named_parameters() if not n.startswith('fc'))
  out = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x))
  assert out.shape == expected.shape == (2, 2, 2, 512)
  assert _relative_error(out, expected) < 1e-5


@pytest.mark.parametrize('conv_impl', ['xla', 'taps'])
def test_r2plus1d18_matches_torchvision(torchvision, tsav_checkpoint, conv_impl):
  """The 4-channel TSAV stem is read as its first 3 input channels: the reference feeds the 4-channel network
  a zero fourth channel."""
  torch, _ = torchvision
  path, _, net = tsav_checkpoint
  x = np.random.default_rng(1).standard_normal((1, 8, 32, 32, 3)).astype(np.float32)  # [N, T, H, W, C]
  with torch.no_grad():
    t = torch.tensor(np.concatenate([x, np.zeros_like(x[..., :1])], -1).transpose(0, 4, 1, 2, 3))
    expected = net.layer4(net.layer3(net.layer2(net.layer1(net.stem(t))))).numpy().transpose(0, 2, 3, 4, 1)
  conversion = converters.convert_checkpoint('r2plus1d_18', path)
  assert conversion.prefix == 'video_model.r2plus1d.'
  model = resnet.R2Plus1D18(conv_impl=conv_impl)
  out = np.asarray(jax.jit(functools.partial(model.apply, train=False))(conversion.variables, x))
  assert out.shape == expected.shape == (1, 1, 2, 2, 512)
  assert _relative_error(out, expected) < 1e-5


def test_r2plus1d18_shapes_and_size(torchvision):
  """Spec §2: 8x112x112 clips -> layer4 1x7x7x512; parameters as torchvision's without fc."""
  _, tv = torchvision
  net = tv.models.video.r2plus1d_18()
  count, abstract = _param_count(resnet.R2Plus1D18(), (1, 8, 112, 112, 3))
  assert count == sum(p.numel() for n, p in net.named_parameters() if not n.startswith('fc'))
  out = jax.eval_shape(functools.partial(resnet.R2Plus1D18().apply, train=False), abstract,
                       jax.ShapeDtypeStruct((2, 8, 112, 112, 3), jnp.float32))
  assert out.shape == (2, 1, 7, 7, 512)
  assert resnet.midplanes(64, 128) == 230 and resnet.midplanes(128, 128) == 288  # torchvision layer2 widths


def test_wider_checkpoint_stem_is_sliced_and_logged(torchvision, caplog):
  """TSAV's 4-channel stem (spec B10): input channels [0, 3) are kept, explicitly and logged."""
  _, tv = torchvision
  sd = _state_dict(tv.models.video.r2plus1d_18())
  sd['stem.0.weight'] = np.random.default_rng(2).standard_normal((45, 4, 1, 7, 7)).astype(np.float32)
  with caplog.at_level(logging.WARNING):
    variables = resnet.r2plus1d18_from_torch(StateDictReader(sd, 'tsav.pth'))
  kernel = variables['params']['stem_spatial']['kernel']
  assert kernel.shape == (1, 7, 7, 3, 45)
  np.testing.assert_array_equal(kernel, sd['stem.0.weight'][:, :3].transpose(2, 3, 4, 1, 0))
  assert 'keeping input channels [0, 3) of the 4' in caplog.text
  with pytest.raises(ValueError, match='has 3 input channels, the model needs 4'):
    resnet.r2plus1d18_from_torch(StateDictReader(_state_dict(tv.models.video.r2plus1d_18()), 'x'), in_channels=4)
