"""The end-to-end sparse model (Dai et al., NAACL 2021, adapted to audio-visual regression; spec sparse_e2e): VGG
trunks whose later stages run only on the positions a cross-modal attention keeps, on the token view.
Config: configs/sparse_e2e.py."""
from __future__ import annotations

import flax.linen as nn
import ml_collections

from affjax import systems
from affjax.models import sparse_stages
from affjax.systems.sparse_e2e.model import QUERIES, SparseAVModel

ConfigDict = ml_collections.ConfigDict
MODALITIES = ('audio', 'visual')


def build(cfg: ConfigDict, compat: ConfigDict) -> nn.Module:
  del compat  # the sparse model reproduces no reference quirk
  if tuple(cfg.modalities) != MODALITIES:
    raise ValueError(f'config.model.modalities={tuple(cfg.modalities)} must be {MODALITIES}: the sparse stages of '
                     'each modality are queried by the other')
  for name in ('width', 'd_model', 'mlp_hidden', 'num_layers', 'num_heads', 'd_ff'):
    if not (isinstance(cfg[name], int) and cfg[name] > 0):
      raise ValueError(f'config.model.{name}={cfg[name]!r} must be an integer > 0')
  if cfg.image_size % 16:
    raise ValueError(f'config.data.image_size={cfg.image_size} must be a multiple of 16 for the VGG trunk (48)')
  if not 0.0 < cfg.top_p <= 1.0:
    raise ValueError(f'config.model.top_p={cfg.top_p!r} must be in (0, 1]')
  warmup_steps = cfg.top_p_warmup_steps
  if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
    raise ValueError(f'config.model.top_p_warmup_steps={warmup_steps!r} must be an integer >= 0 (0: no annealing)')
  if not 0.0 < cfg.capacity <= 1.0:
    raise ValueError(f'config.model.capacity={cfg.capacity!r} must be in (0, 1] (fraction of sites per stage)')
  return SparseAVModel(
      width=cfg.width, d_model=cfg.d_model, mlp_hidden=cfg.mlp_hidden, sparse=cfg.sparse,
      sparse_impl=systems.field(cfg, 'sparse_impl', sparse_stages.SPARSE_IMPLS), top_p=cfg.top_p,
      top_p_warmup_steps=warmup_steps, capacity=cfg.capacity,
      scma_grad=systems.field(cfg, 'scma_grad', sparse_stages.SCMA_GRADS), query=systems.field(cfg, 'query', QUERIES),
      num_layers=cfg.num_layers, num_heads=cfg.num_heads, d_ff=cfg.d_ff, dropout=cfg.dropout,
      dtype=systems.dtype(cfg))


def warmup(model: nn.Module, cfg: ConfigDict) -> tuple[nn.Module, int] | None:
  """With gather stages and `top_p_warmup_steps`, the first steps run masked-dense stages, so that the capacity can
  be annealed (a gather stage computes a fixed number of sites)."""
  if cfg.sparse and cfg.sparse_impl == 'gather' and cfg.top_p_warmup_steps:
    return model.clone(warmup_phase=True), cfg.top_p_warmup_steps
  return None


SYSTEM = systems.System(names=('sparse_e2e',), build=build, views=('tokens',), warmup=warmup)
