"""Raw-waveform 1-D CNNs (End2You-style `Base` networks): `[N, W]` samples -> `[N, F]`.

Each block: Conv1d (bias) -> BatchNorm1d -> ELU -> MaxPool1d (kernel = stride, floor mode, -inf
padding); then a global mean over time. Conv kernels Kaiming-uniform (U(+-sqrt(6/fan_in))), biases 0.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models.batch_norm import batch_norm
from affjax.models.layers import conv_general_dilated, max_pool_tiled
from affjax.models.torch_convert import StateDictReader

Array = jax.Array


class Block1D(NamedTuple):
  features: int
  kernel_size: int
  padding: int
  pool: int
  pool_padding: int


# Block tables (spec rnn_attn 2.2); lengths for W = 10560 in the comments.
AUDIO_CNN_TABLES: dict[str, tuple[Block1D, ...]] = {
    # 10559 -> 5280 -> 5279 -> 528, F = 40
    'emo16': (Block1D(40, 20, 9, 2, 1), Block1D(40, 40, 19, 10, 4)),
    # -> 1055 -> 131 -> 16, F = 64
    'emo18': (Block1D(16, 8, 3, 10, 0), Block1D(32, 6, 2, 8, 0), Block1D(64, 6, 2, 8, 0)),
    # -> 2640 -> 660 -> 165 -> 41, F = 128
    'zhao19': (Block1D(64, 3, 1, 4, 0), Block1D(64, 3, 1, 4, 0), Block1D(128, 3, 1, 4, 0),
               Block1D(128, 3, 1, 4, 0)),
}


class AudioCNN1D(nn.Module):
  """1-D CNN over raw audio built from a block table, `[N, W]` -> `[N, blocks[-1].features]`.

  `mask` (`[N]` bool, optional) keeps padded windows out of the train-mode BatchNorm statistics.
  Each block's output `[N, L_i, C_i]` is sown into the 'intermediates' collection as `block{i}`.
  """

  blocks: tuple[Block1D, ...] = AUDIO_CNN_TABLES['zhao19']
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    bn_mask = None if mask is None else mask[:, None, None]
    x = x.astype(self.dtype)[..., None]
    for i, blk in enumerate(self.blocks):
      x = nn.Conv(blk.features, (blk.kernel_size,), padding=((blk.padding, blk.padding),),
                  kernel_init=nn.initializers.kaiming_uniform(), dtype=self.dtype,
                  conv_general_dilated=conv_general_dilated, name=f'conv{i}')(x)
      x = batch_norm(x, bn_mask, train=train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f'bn{i}')
      x = nn.elu(x)
      x = max_pool_tiled(x, (blk.pool,), blk.pool_padding)
      self.sow('intermediates', f'block{i}', x)
    return jnp.mean(x, axis=1)


def from_torch(blocks: tuple[Block1D, ...], sd: StateDictReader) -> dict[str, dict]:
  """Variables from an End2You `Base` state dict (`network` = a Sequential of per-block
  [Sequential(Conv1d, BatchNorm1d, activation), MaxPool1d]: tensors `network.<2i>.0.{weight,bias}` and
  `network.<2i>.1.{weight,bias,running_mean,running_var}`)."""
  params, stats, c_in = {}, {}, 1
  for i, blk in enumerate(blocks):
    params[f'conv{i}'] = sd.conv(f'network.{2 * i}.0', bias=True)
    shape, want = params[f'conv{i}']['kernel'].shape, (blk.kernel_size, c_in, blk.features)
    if shape != want:  # e.g. End2You's own emo18 (64/128/256 channels), not the study's (16/32/64)
      raise ValueError(f'{sd.source}: network.{2 * i}.0.weight is {shape[::-1]} (out, in, kernel), this network\'s '
                       f'block {i} needs {want[::-1]}')
    params[f'bn{i}'], stats[f'bn{i}'] = sd.batch_norm(f'network.{2 * i}.1')
    c_in = blk.features
  return {'params': params, 'batch_stats': stats}
