"""Concatenation + transformer-encoder fusion over per-frame MobileFaceNet + Zhao19 backbones, end to end.

Karas et al., ABAW3 2022 (`../shared/specs/rnn_attn.md`, `concatselfattn`). Variants as configs/audio_visual.py,
e.g. `configs/self_attn.py:smoke`, `:frozen`, `:finetune`, `:aux`, `:visual`.
"""
import ml_collections

from configs import audio_visual, variants


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = audio_visual.audio_visual_config('self_attn')
  config.model.update(d_ff=128, num_heads=4, attention_impl='xla')  # 'cudnn' on GPUs with bfloat16
  return variants.apply(config, arg, audio_visual.VARIANTS)
