"""Cross-modal (MulT-style) attention fusion over per-frame MobileFaceNet + Zhao19 backbones, end to end.

Karas et al., ABAW3 2022 (`../shared/specs/rnn_attn.md`). Variants through `get_config(arg)` (see
configs/audio_visual.py), e.g.
  configs/cross_attn.py          the default run
  configs/cross_attn.py:smoke    a few steps on a tiny synthetic tree, for tests and install checks
  configs/cross_attn.py:visual   faces only (ablation); `:audio` audio only; combine as `:smoke,visual`
"""
import ml_collections

from configs import audio_visual, variants


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = audio_visual.audio_visual_config('cross_attn')
  config.compat.multv2_reference_layers = False  # rnn_attn bug 2: no query residual, every layer reads the inputs
  config.model.update(d_ff=128, num_heads=4, n_ca=2, n_cv=2, gated=False,
                      attention_impl='xla')  # or 'cudnn' on GPUs with bfloat16
  return variants.apply(config, arg, audio_visual.VARIANTS)
