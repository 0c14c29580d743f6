"""IR-50 (LFAN's face CNN): parity with the same network in PyTorch through the converter, and gradual release."""

import functools
import sys

import jax
import numpy as np
import pytest

from affjax.models.backbones import ir50

import torch_checkpoints

KEY = jax.random.key(0, impl='unsafe_rbg')


def _torch_ir50(torch):
  """IR-50 at 40 x 40 in PyTorch (tools/torch_lfan.py, InsightFace module names), random BN statistics."""
  sys.path.insert(0, 'tools')
  import torch_lfan  # pylint: disable=g-import-not-at-top
  nn = torch.nn
  torch.manual_seed(0)
  net = torch_lfan.IR50()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
      elif isinstance(m, nn.PReLU):
        m.weight.uniform_(0.1, 0.4)
  return net.eval()


def test_ir50_matches_pytorch_with_converted_weights(tmp_path):
  """Saved as ABAW2's backbone checkpoints are: a bare state dict of `my_res50`, i.e. the IR-50 `Backbone`
  {input_layer, body, output_layer} under `backbone.` next to the `logits` classifier; converted through the
  CLI's path."""
  torch = pytest.importorskip('torch')
  net = _torch_ir50(torch)
  faces = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3)).astype(np.float32)
  with torch.no_grad():
    x = (torch.from_numpy(faces).permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
    ref = net(x).numpy()
  my_res50, backbone = torch.nn.Module(), torch.nn.Module()
  backbone.input_layer, backbone.body, backbone.output_layer = net.input_layer, net.body, net.output_layer
  my_res50.backbone, my_res50.logits = backbone, net.logits
  conversion = torch_checkpoints.save_and_convert('ir50', my_res50.state_dict(), tmp_path / 'res50_ir_0.887.pth')
  assert conversion.prefix == 'backbone.' and conversion.outside_prefix == ['logits.bias', 'logits.weight']
  variables = conversion.variables
  model = ir50.IR50()
  abstract = jax.eval_shape(functools.partial(model.init, train=False), KEY, faces)
  assert jax.tree.map(np.shape, abstract) == jax.tree.map(np.shape, variables)
  n_params = sum(np.size(v) for v in jax.tree.leaves(variables['params']))
  assert n_params == sum(p.numel() for n, p in net.named_parameters() if not n.startswith('logits'))
  out = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, faces))
  assert out.shape == (2, 512)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-6)
  assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


@pytest.mark.parametrize('released', [1, 3])
def test_gradual_release_trains_only_released_groups(released):
  """Gradients reach exactly the released groups, and frozen BatchNorms keep their running statistics
  (on a shortened IR-50 with units (1, 1, 4, 2): stage 4 is units 6-7, the last three of stage 3 are 3-5)."""
  units = (1, 1, 4, 2)
  model = ir50.IR50(released=released, stage_units=units)
  faces = np.random.default_rng(1).integers(0, 256, (2, 40, 40, 3)).astype(np.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(KEY, faces)

  def loss(params):
    out, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, faces, train=True,
                               rngs={'dropout': KEY}, mutable=['batch_stats'])
    return out[:, :3].sum(), updates['batch_stats']

  grads, stats = jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
  first = ir50.first_trainable_unit(released, units)
  for name, g in grads.items():
    trains = name.startswith('head') or (name.startswith('unit') and int(name[4:]) >= first)
    moved = any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(g))
    assert moved == trains, name
    if name in stats:
      changed = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stats[name]),
                                                            jax.tree.leaves(variables['batch_stats'][name])))
      assert changed == trains, name
  assert first == {1: 8, 3: 3}[released]
  assert ir50.first_trainable_unit(released) == {1: 24, 3: 18}[released]  # IR-50: stage-3 units 11-13 start at 18


def test_release_count_is_checked():
  with pytest.raises(ValueError, match='released=4'):
    ir50.first_trainable_unit(4)
