"""Concatenation + (Bi)LSTM fusion over per-frame MobileFaceNet + Zhao19 backbones, end to end.

Karas et al., ABAW3 2022 (`../shared/specs/rnn_attn.md`, `concatrnn` / `concatbirnn`): the paper's finding is
that with low-complexity backbones trained end to end the LSTM can beat attention. Bidirectional with
`--config.model.bidirectional=True`. Variants as configs/audio_visual.py, e.g. `configs/lstm.py:smoke`,
`:frozen`, `:finetune`, `:aux`, `:visual`.
"""
import ml_collections

from configs import audio_visual, variants


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = audio_visual.audio_visual_config('lstm')
  config.model.bidirectional = False
  return variants.apply(config, arg, audio_visual.VARIANTS)
