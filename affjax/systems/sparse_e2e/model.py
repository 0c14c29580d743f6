"""The sparse end-to-end audio-visual model (spec sparse_e2e §5): VGG trunks with cross-modal sparse stages,
per-modality Transformer encoders over tokens, late weighted fusion, per-frame valence/arousal.

    window of T tokens (`affjax.data.views.tokens`): face 48x48x3, log-mel patch 128x32x1 per token
    low level (dense) per modality; query = GAP of the other modality's low level (`query='cross'`)
    sparse stages + flatten MLP -> e_m [B, T, d]; + PE -> post-LN encoder layers -> h_m; z_m = Dense(2)(h_m)
    y = tanh(w_a z_a + face_valid · w_v z_v)  [B, T, 2], per token (evaluation interpolates it to every frame)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax.models import sparse_stages
from affjax.models.audio import token_mel
from affjax.models.audio.frame_windows import slice_audio_windows
from affjax.models.backbones.vgg import SparseVggTrunk, VggLowLevel
from affjax.models.attention import PostLNEncoderLayer
from affjax.models.layers import sinusoidal_pe, symmetric_uniform, torch_dense

Array = jax.Array

QUERIES = ('cross', 'learned', 'self')


class TokenEncoder(nn.Module):
  """e `[B, T, d]` + sinusoidal PE -> `num_layers` post-LN layers (ReLU FFN), key mask `[B, T]` -> `[B, T, d]`."""

  num_layers: int = 4
  num_heads: int = 4
  d_ff: int = 2048
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, e: Array, key_mask: Array, *, train: bool) -> Array:
    x = e + jnp.asarray(sinusoidal_pe(e.shape[1], e.shape[2]), e.dtype)
    for i in range(self.num_layers):
      x = PostLNEncoderLayer(self.d_ff, self.num_heads, self.dropout, 'relu', dtype=self.dtype, name=f'layer{i}')(
          x, key_mask=key_mask, train=train)
    return x


class SparseAVModel(nn.Module):
  """Per-frame valence/arousal from faces and audio through sparse VGG trunks.

  `__call__(batch, train=...)` with a token-view batch: faces `[B, T, 48, 48, 3]` uint8, audio `[B, L]`,
  audio_offsets `[B, T]` (start of token t's `token_mel.PATCH_SAMPLES` in the segment), mask `[B, T]` bool
  (padding is a tail), face_mask `[B, T]` bool (absent: every token has a face) -> {'va': `[B, T, 2]` float32
  in (-1, 1), per token}.

  `top_p_warmup_steps` > 0 anneals the pruning from none to `top_p` over the first training steps (counted in
  `batch_stats/train_steps`, so that evaluation and resumed runs follow the same schedule). Gather stages have
  a fixed capacity, so a gather model trains its warm-up as `warmup_phase=True` (`models.warmup_model`):
  masked-dense stages whose capacity is annealed from 1 to `capacity` too, ending at the gather stages' sites.
  """

  width: int = 64
  d_model: int = 64
  mlp_hidden: int = 1024
  sparse: bool = True
  sparse_impl: str = 'masked_dense'
  top_p: float = 0.8
  top_p_warmup_steps: int = 0
  capacity: float = 0.4
  scma_grad: str = 'renorm'
  query: str = 'cross'
  num_layers: int = 4
  num_heads: int = 4
  d_ff: int = 2048
  dropout: float = 0.1
  dtype: Any = jnp.float32
  warmup_phase: bool = False

  def _trunk(self, name: str) -> SparseVggTrunk:
    impl = 'masked_dense' if self.warmup_phase else self.sparse_impl
    return SparseVggTrunk(self.width, self.d_model, self.mlp_hidden, self.sparse, impl, self.capacity,
                          self.scma_grad, self.dtype, name=name)

  def _pruning(self, train: bool) -> dict[str, Any]:
    """The trunks' pruning arguments: top_p (annealed over the training steps taken so far with
    `top_p_warmup_steps`), and in the warm-up phase of a gather model the annealed capacity."""
    if not self.top_p_warmup_steps:
      return dict(top_p=self.top_p)
    steps = self.variable('batch_stats', 'train_steps', lambda: jnp.zeros((), jnp.int32))
    pruning = dict(top_p=sparse_stages.anneal_from_one(self.top_p, self.top_p_warmup_steps, steps.value))
    if self.warmup_phase and self.sparse_impl == 'gather':
      pruning['capacity'] = sparse_stages.anneal_from_one(self.capacity, self.top_p_warmup_steps, steps.value)
    if train and not self.is_initializing():
      steps.value = steps.value + 1
    return pruning

  def _queries(self, fv: Array, fa: Array, face_valid: Array) -> tuple[Array, Array]:
    """Queries of the visual and audio stages `[N, width]` from the low-level features."""
    if self.query == 'learned':
      return tuple(jnp.broadcast_to(self.param(f'{m}_query', nn.initializers.normal(1.0), (self.width,)),
                                    (fv.shape[0], self.width)) for m in ('visual', 'audio'))
    gv, ga = fv.astype(jnp.float32).mean((1, 2)), fa.astype(jnp.float32).mean((1, 2))
    if self.query == 'self':
      return gv, ga
    if self.query != 'cross':
      raise ValueError(f'config.model.query={self.query!r} is not one of {list(QUERIES)}')
    no_face = self.param('audio_query_no_face', nn.initializers.normal(1.0), (self.width,))
    return ga, jnp.where(face_valid[:, None], gv, no_face)

  @nn.compact
  def __call__(self, batch: Mapping[str, Array], *, train: bool) -> dict[str, Array]:
    token_mask = batch['mask']
    face_valid = batch.get('face_mask', token_mask) & token_mask
    b, t = token_mask.shape
    n = b * t
    flat_valid, flat_face = token_mask.reshape(n), face_valid.reshape(n)

    faces = batch['faces'].reshape(n, *batch['faces'].shape[2:]).astype(jnp.float32) / 255.0
    site_face = jnp.broadcast_to(flat_face[:, None, None], faces.shape[:3])
    faces = sparse_stages.MaskedBatchNorm(affine=False, name='face_norm')(faces, site_face, train=train)
    faces = jnp.where(flat_face[:, None, None, None], faces, 0)  # a missing face is the mean face

    windows = slice_audio_windows(batch['audio'], batch['audio_offsets'], token_mel.PATCH_SAMPLES)
    mel = token_mel.mel_patches(windows).reshape(n, token_mel.PATCH_FRAMES, token_mel.N_MELS)
    site_valid = jnp.broadcast_to(flat_valid[:, None], mel.shape[:2])
    mel = sparse_stages.MaskedBatchNorm(affine=False, name='mel_norm')(mel, site_valid, train=train)  # per mel bin
    mel = jnp.swapaxes(mel, 1, 2)[..., None]  # [N, 128 mels, 32 frames, 1]

    fv = VggLowLevel(self.width, self.dtype, name='visual_low')(faces, flat_face, train=train)
    fa = VggLowLevel(self.width, self.dtype, name='audio_low')(mel, flat_valid, train=train)
    qv, qa = self._queries(fv, fa, flat_face)
    pruning = self._pruning(train)
    ev = self._trunk('visual_trunk')(fv, qv, flat_face, train=train, **pruning).reshape(b, t, -1)
    ea = self._trunk('audio_trunk')(fa, qa, flat_valid, train=train, **pruning).reshape(b, t, -1)

    encoder = lambda name: TokenEncoder(self.num_layers, self.num_heads, self.d_ff, self.dropout, self.dtype,
                                        name=name)
    hv = encoder('visual_encoder')(ev, face_valid, train=train)
    ha = encoder('audio_encoder')(ea, token_mask, train=train)
    zv = torch_dense(2, self.d_model, dtype=jnp.float32, name='visual_head')(hv.astype(jnp.float32))
    za = torch_dense(2, self.d_model, dtype=jnp.float32, name='audio_head')(ha.astype(jnp.float32))
    w = self.param('fusion', symmetric_uniform(1 / np.sqrt(2)), (2,))
    y = jnp.tanh(w[0] * za + face_valid[..., None] * w[1] * zv)
    return {'va': y}
