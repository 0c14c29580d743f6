"""Tests for the large face backbones (InceptionResnetV1, VGGFace2 ResNet-50 / SE-ResNet-50): each against the
same network written in PyTorch here (float64, eval mode) with the weights converted by its `from_torch`,
parameter counts, input-size checks, normalisation and masked train-mode BatchNorm."""

import functools
import math
import os
import pickle
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax.models import converters, torch_convert
from affjax.models.backbones import vggface2_resnet
from affjax.models.backbones.inception_resnet_v1 import InceptionResnetV1, l2_normalize
from affjax.models.backbones.vggface2_resnet import VGGFace2ResNet50

import torch_checkpoints

torch = pytest.importorskip('torch')
tnn = torch.nn

KEY = jax.random.key(0, impl='unsafe_rbg')
DROPOUT_KEY = jax.random.key(1, impl='unsafe_rbg')


def _param_count(tree) -> int:
  return sum(math.prod(p.shape) for p in jax.tree.leaves(tree))


def _abstract_variables(model, size: int):
  return jax.eval_shape(functools.partial(model.init, train=False), KEY,
                        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


def _randomize_batch_norms(net, images: np.ndarray, seed: int):
  """Running statistics from one train-mode pass over `images` (so activations stay well scaled), then
  perturbed, and random affine parameters: every BatchNorm is non-trivial in eval mode."""
  bns = [m for m in net.modules() if isinstance(m, tnn.modules.batchnorm._BatchNorm)]
  gen = torch.Generator().manual_seed(seed)
  rand = lambda like, lo, hi: lo + (hi - lo) * torch.rand(like.shape, generator=gen, dtype=like.dtype)
  with torch.no_grad():
    for bn in bns:
      bn.momentum = 1.0
    net.train()(torch.tensor(images.transpose(0, 3, 1, 2)))
    for bn in bns:
      bn.momentum = 0.1
      bn.running_mean += 0.2 * bn.running_var.sqrt() * rand(bn.running_mean, -1, 1)
      bn.running_var *= rand(bn.running_var, 0.7, 1.3)
      bn.weight.copy_(rand(bn.weight, 0.7, 1.3))
      bn.bias.copy_(rand(bn.bias, -0.2, 0.2))
  return net.eval()


def _state_dict(net) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().astype(np.float32) if v.is_floating_point() else v.numpy()
          for k, v in net.state_dict().items()}


def _torch_forward(net, images: np.ndarray) -> np.ndarray:
  """The eval-mode network in float64 on `[N, H, W, 3]` channels-last inputs."""
  with torch.no_grad():
    return net.double()(torch.tensor(images.transpose(0, 3, 1, 2), dtype=torch.float64)).numpy()


def _assert_close(out, expected, rtol=1e-5):
  """Max error relative to the largest reference magnitude."""
  err = np.abs(np.asarray(out, np.float64) - expected).max() / np.abs(expected).max()
  assert err < rtol, err


def _check_masked_train_mode(model, variables, images, mask):
  """Train-mode outputs of the valid images and the updated statistics do not depend on masked images."""
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mask=mask, rngs={'dropout': DROPOUT_KEY},
                                           mutable=['batch_stats']))
  noise = np.random.default_rng(7).uniform(size=images.shape).astype(np.float32)
  out1, upd1 = apply(variables, images)
  out2, upd2 = apply(variables, np.where(mask[:, None, None, None], images, noise))
  np.testing.assert_array_equal(np.asarray(out1)[mask], np.asarray(out2)[mask])
  jax.tree.map(np.testing.assert_array_equal, upd1['batch_stats'], upd2['batch_stats'])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), upd1['batch_stats'],
                                         variables['batch_stats']))
  assert all(changed)  # every running statistic moved towards the batch's


# ----------------------------------------------------------------------------- InceptionResnetV1
def _torch_inception_resnet_v1():
  """facenet-pytorch's InceptionResnetV1 layout and module names, written from its description, plus a
  `logits` classifier head that the converter must leave out."""

  class BasicConv2d(tnn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0):
      super().__init__()
      self.conv = tnn.Conv2d(cin, cout, k, stride, padding, bias=False)
      self.bn = tnn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
      return torch.relu(self.bn(self.conv(x)))

  class Block(tnn.Module):
    """Branches concatenated; residual blocks project back (1x1 conv, bias), scale and add the input."""

    def __init__(self, branches, residual=None, scale=1.0, relu=True):
      super().__init__()
      self.names = [f'branch{k}' for k in range(len(branches))]
      for name, branch in zip(self.names, branches):
        setattr(self, name, branch)
      if residual is not None:
        self.conv2d = tnn.Conv2d(*residual, 1)
      self.residual, self.scale, self.relu = residual is not None, scale, relu

    def forward(self, x):
      y = torch.cat([getattr(self, name)(x) for name in self.names], 1)
      if not self.residual:
        return y
      y = self.conv2d(y) * self.scale + x
      return torch.relu(y) if self.relu else y

  B, S = BasicConv2d, tnn.Sequential
  block35 = lambda: Block([B(256, 32, 1), S(B(256, 32, 1), B(32, 32, 3, 1, 1)),
                           S(B(256, 32, 1), B(32, 32, 3, 1, 1), B(32, 32, 3, 1, 1))], (96, 256), 0.17)
  block17 = lambda: Block([B(896, 128, 1), S(B(896, 128, 1), B(128, 128, (1, 7), 1, (0, 3)),
                                             B(128, 128, (7, 1), 1, (3, 0)))], (256, 896), 0.10)
  block8 = lambda scale=0.20, relu=True: Block(
      [B(1792, 192, 1), S(B(1792, 192, 1), B(192, 192, (1, 3), 1, (0, 1)), B(192, 192, (3, 1), 1, (1, 0)))],
      (384, 1792), scale, relu)

  class Net(tnn.Module):
    def __init__(self):
      super().__init__()
      self.conv2d_1a, self.conv2d_2a, self.conv2d_2b = B(3, 32, 3, 2), B(32, 32, 3), B(32, 64, 3, 1, 1)
      self.maxpool_3a = tnn.MaxPool2d(3, 2)
      self.conv2d_3b, self.conv2d_4a, self.conv2d_4b = B(64, 80, 1), B(80, 192, 3), B(192, 256, 3, 2)
      self.repeat_1 = S(*[block35() for _ in range(5)])
      self.mixed_6a = Block([B(256, 384, 3, 2), S(B(256, 192, 1), B(192, 192, 3, 1, 1), B(192, 256, 3, 2)),
                             tnn.MaxPool2d(3, 2)])
      self.repeat_2 = S(*[block17() for _ in range(10)])
      self.mixed_7a = Block([S(B(896, 256, 1), B(256, 384, 3, 2)), S(B(896, 256, 1), B(256, 256, 3, 2)),
                             S(B(896, 256, 1), B(256, 256, 3, 1, 1), B(256, 256, 3, 2)), tnn.MaxPool2d(3, 2)])
      self.repeat_3 = S(*[block8() for _ in range(5)])
      self.block8 = block8(1.0, relu=False)
      self.dropout = tnn.Dropout(0.6)
      self.last_linear = tnn.Linear(1792, 512, bias=False)
      self.last_bn = tnn.BatchNorm1d(512, eps=1e-3)
      self.logits = tnn.Linear(512, 10)

    def forward(self, x):
      x = (x - 0.5) / 0.5
      for m in [self.conv2d_1a, self.conv2d_2a, self.conv2d_2b, self.maxpool_3a, self.conv2d_3b, self.conv2d_4a,
                self.conv2d_4b, self.repeat_1, self.mixed_6a, self.repeat_2, self.mixed_7a, self.repeat_3, self.block8]:
        x = m(x)
      x = self.last_bn(self.last_linear(self.dropout(x.mean((2, 3)))))
      return torch.nn.functional.normalize(x, p=2, dim=1)

  return Net()


@pytest.fixture(scope='module')
def inception_resnet_v1(tmp_path_factory):
  """(torch net in float64, converted variables, images [2, 112, 112, 3]): the net saved as facenet-pytorch's
  released weights are (a bare state dict, `logits` included), converted through the CLI's path."""
  rng = np.random.default_rng(0)
  torch.manual_seed(0)
  images = rng.uniform(size=(2, 112, 112, 3)).astype(np.float32)
  net = _randomize_batch_norms(_torch_inception_resnet_v1(), rng.uniform(size=(4, 112, 112, 3)).astype(np.float32),
                               seed=1)
  conversion = torch_checkpoints.save_and_convert('inceptionresnetv1', net.state_dict(),
                                                  tmp_path_factory.mktemp('facenet') / '20180402-114759-vggface2.pt')
  assert conversion.heads_left_out == ['logits.bias', 'logits.weight']
  return net.double(), conversion.variables, images


def test_inception_resnet_v1_params_and_sizes():
  model = InceptionResnetV1(dtype=jnp.bfloat16)  # the compute dtype: parameters stay float32
  abstract = _abstract_variables(model, 112)
  assert {a.dtype for a in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  n = _param_count(abstract['params'])
  assert abs(n - 23.5e6) / 23.5e6 < 0.005, n  # spec: 23.5 M
  torch_n = sum(p.numel() for name, p in _torch_inception_resnet_v1().named_parameters()
                if not name.startswith('logits'))
  assert n == torch_n
  out = jax.eval_shape(functools.partial(model.apply, train=False), abstract,
                       jax.ShapeDtypeStruct((3, 160, 160, 3), jnp.float32))  # 112: test_..._matches_torch
  assert out.shape == (3, 512) and out.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='S >= 75'):
    jax.eval_shape(functools.partial(model.init, train=False), KEY, jax.ShapeDtypeStruct((1, 74, 74, 3), jnp.float32))


def test_inception_resnet_v1_matches_torch(inception_resnet_v1):
  net, variables, images = inception_resnet_v1
  abstract = _abstract_variables(InceptionResnetV1(), 112)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, abstract)
  out = jax.jit(functools.partial(InceptionResnetV1().apply, train=False))(variables, images)
  assert out.shape == (2, 512) and out.dtype == jnp.float32
  expected = _torch_forward(net, images)
  _assert_close(out, expected)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=-1), 1.0, rtol=1e-5)


def test_inception_resnet_v1_masked_train_mode(inception_resnet_v1):
  _, variables, images = inception_resnet_v1
  images = np.concatenate([images, images[:1] * 0.5])
  _check_masked_train_mode(InceptionResnetV1(), variables, images, np.array([True, False, True]))


def test_l2_normalize_matches_torch_and_has_finite_gradient_at_zero():
  x = np.random.default_rng(6).standard_normal((3, 8)).astype(np.float32)
  x[1] = 0.0
  expected = torch.nn.functional.normalize(torch.tensor(x, dtype=torch.float64), p=2, dim=1).numpy()
  np.testing.assert_allclose(np.asarray(l2_normalize(x)), expected, rtol=1e-6, atol=1e-7)
  grad = np.asarray(jax.grad(lambda x: l2_normalize(x)[:, 0].sum())(x))
  assert np.isfinite(grad).all()
  np.testing.assert_allclose(grad[0], (np.eye(8)[0] - expected[0, 0] * expected[0]) / np.linalg.norm(x[0]),
                             rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- VGGFace2 ResNet-50
def _torch_vggface2_resnet50(se: bool):
  """cydonia999/VGGFace2-pytorch's ResNet-50 / SENet-50 layout and module names (Caffe-style bottleneck,
  ceil-mode max-pool), without the top as the study uses it: AvgPool2d(7, 1), then a mean over positions."""

  class Bottleneck(tnn.Module):
    def __init__(self, cin, planes, stride):
      super().__init__()
      out = 4 * planes
      self.conv1, self.bn1 = tnn.Conv2d(cin, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes)
      self.conv2, self.bn2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False), tnn.BatchNorm2d(planes)
      self.conv3, self.bn3 = tnn.Conv2d(planes, out, 1, bias=False), tnn.BatchNorm2d(out)
      if se:
        self.conv4, self.conv5 = tnn.Conv2d(out, out // 16, 1), tnn.Conv2d(out // 16, out, 1)
      self.downsample = (tnn.Sequential(tnn.Conv2d(cin, out, 1, stride, bias=False), tnn.BatchNorm2d(out))
                         if stride != 1 or cin != out else None)

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = torch.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      if se:
        g = torch.nn.functional.avg_pool2d(y, kernel_size=y.shape[2])
        y = torch.sigmoid(self.conv5(torch.relu(self.conv4(g)))) * y
      return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Net(tnn.Module):
    def __init__(self):
      super().__init__()
      self.conv1, self.bn1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False), tnn.BatchNorm2d(64)
      self.maxpool = tnn.MaxPool2d(3, 2, 0, ceil_mode=True)
      cin = 64
      for i, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
        layer = [Bottleneck(cin, planes, stride)] + [Bottleneck(4 * planes, planes, 1) for _ in range(blocks - 1)]
        setattr(self, f'layer{i + 1}', tnn.Sequential(*layer))
        cin = 4 * planes
      self.avgpool = tnn.AvgPool2d(7, 1)
      self.fc = tnn.Linear(2048, 10)

    def forward(self, x):
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.avgpool(x).mean((2, 3))

  return Net()


def _np_vggface2_input(images: np.ndarray) -> np.ndarray:
  """[0, 1] RGB -> 0-255 BGR minus the VGGFace2 mean, float64."""
  return images[..., ::-1].astype(np.float64) * 255.0 - np.array([91.4953, 103.8827, 131.0912])


def _save_oxford_pickle(net, path: str) -> None:
  """Oxford's `*_weight.pkl` format: a Python 2 pickle (protocol 2) of name -> float numpy array with the
  module's names, no BatchNorm counters (converted from Caffe)."""
  with open(path, 'wb') as f:
    pickle.dump({k: v for k, v in _state_dict(net).items() if not k.endswith('num_batches_tracked')}, f, protocol=2)


@functools.lru_cache
def _vggface2_case(se: bool):
  """(torch net in float64, converted variables, images [1, 200, 200, 3]): the net saved in Oxford's pickle
  format, converted through the CLI's path."""
  rng = np.random.default_rng(2)
  torch.manual_seed(2)
  images = rng.uniform(size=(1, 200, 200, 3)).astype(np.float32)
  calib = _np_vggface2_input(rng.uniform(size=(2, 200, 200, 3))).astype(np.float32)
  net = _randomize_batch_norms(_torch_vggface2_resnet50(se), calib, seed=3)
  name = 'vggface2_senet50' if se else 'vggface2_resnet50'
  path = os.path.join(tempfile.mkdtemp(), f'{"senet50" if se else "resnet50"}_ft_weight.pkl')
  _save_oxford_pickle(net, path)
  conversion = converters.convert_checkpoint(name, path)
  assert conversion.heads_left_out == ['fc.bias', 'fc.weight']
  return net.double(), conversion.variables, images


@pytest.mark.parametrize('se', [False, True])
def test_vggface2_resnet50_params_and_sizes(se):
  model = VGGFace2ResNet50(se=se, dtype=jnp.bfloat16)  # the compute dtype: parameters stay float32
  abstract = _abstract_variables(model, 195)
  assert {a.dtype for a in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  n = _param_count(abstract['params'])
  torch_n = sum(p.numel() for name, p in _torch_vggface2_resnet50(se).named_parameters() if not name.startswith('fc'))
  assert n == torch_n
  assert abs(n - (26.04e6 if se else 23.51e6)) < 0.01e6, n  # torchvision ResNet-50 without fc: 23.51 M
  for size in [226, 256]:  # 226: the largest 7x7 layer4 map; 256: 8x8, averaged over the 2x2 pooled positions
    out = jax.eval_shape(functools.partial(model.apply, train=False), abstract,
                         jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
    assert out.shape == (2, 2048) and out.dtype == jnp.bfloat16
  for shape in [(1, 194, 194, 3), (1, 200, 224, 3)]:
    with pytest.raises(ValueError, match='S >= 195'):
      jax.eval_shape(functools.partial(model.init, train=False), KEY, jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize('se', [False, True])
def test_vggface2_resnet50_matches_torch(se):
  net, variables, images = _vggface2_case(se)
  model = VGGFace2ResNet50(se=se)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, _abstract_variables(model, 200))
  out = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  assert out.shape == (1, 2048) and out.dtype == jnp.float32
  _assert_close(out, _torch_forward(net, _np_vggface2_input(images)))


def test_vggface2_resnet50_masked_train_mode():
  _, variables, images = _vggface2_case(False)
  images = np.concatenate([images, images * 0.5, images[:, ::-1]])[:, :195, :195]
  _check_masked_train_mode(VGGFace2ResNet50(), variables, images, np.array([True, False, True]))


def test_vggface2_normalisation_and_compat():
  images = np.random.default_rng(4).uniform(size=(2, 5, 5, 3)).astype(np.float32)
  out = vggface2_resnet.vggface2_normalize(images)
  np.testing.assert_allclose(np.asarray(out), _np_vggface2_input(images), rtol=1e-6, atol=1e-4)
  compat = vggface2_resnet.vggface2_normalize(images, compat_rgb01_norm=True)  # spec bug 7: RGB [0, 1] - BGR mean/255
  np.testing.assert_allclose(np.asarray(compat), images - np.array([0.357, 0.406, 0.512]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('size', [100, 101, 112])
def test_max_pool_ceil_matches_torch(size):
  x = np.random.default_rng(5).standard_normal((2, size, size, 3)).astype(np.float32)
  expected = tnn.MaxPool2d(3, 2, 0, ceil_mode=True)(torch.tensor(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(np.asarray(vggface2_resnet.max_pool_ceil(x, 3, 2)), expected)


def test_vggface2_converter_rejects_other_network():
  with pytest.raises(ValueError, match=r'64 tensors were not converted to vggface2_resnet50: layer1.0.conv4.bias'):
    converters.convert('vggface2_resnet50', _state_dict(_torch_vggface2_resnet50(se=True)))  # its SE convs left over
  with pytest.raises(ValueError, match=r'has no vggface2_senet50 .* Player4.2.conv5.weight'):
    converters.convert('vggface2_senet50', _state_dict(_torch_vggface2_resnet50(se=False)))


def test_read_numpy_pickle_state_dict(tmp_path):
  """Oxford's VGGFace2 weights are pickled dicts of numpy arrays (numpy 1 module paths, Python 2)."""
  sd = {'conv1.weight': np.arange(6, dtype=np.float64).reshape(1, 2, 3), 'bn1.num_batches_tracked': np.array(3)}
  data = pickle.dumps(sd, protocol=2)
  for name, blob in [('new.pkl', data), ('old.pkl', data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray'))]:
    (tmp_path / name).write_bytes(blob)
    read = torch_convert.read_torch_checkpoint(str(tmp_path / name))
    assert read['conv1.weight'].dtype == np.float32 and read['bn1.num_batches_tracked'].dtype == np.int64
    np.testing.assert_array_equal(read['conv1.weight'], sd['conv1.weight'])
  (tmp_path / 'evil.pkl').write_bytes(pickle.dumps({'w': os.getcwd}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match='not allowed'):
    torch_convert.read_torch_checkpoint(str(tmp_path / 'evil.pkl'))
  (tmp_path / 'list.pkl').write_bytes(pickle.dumps([np.zeros(2)], protocol=2))
  with pytest.raises(ValueError, match='list.pkl'):
    torch_convert.read_torch_checkpoint(str(tmp_path / 'list.pkl'))
