"""Cross-modal (MulT-style) attention fusion over per-frame MobileFaceNet + Zhao19 backbones, end to end.

Karas et al., ABAW3 2022 (`../shared/specs/rnn_attn.md`). Variants through `get_config(arg)`:
  configs/cross_attn.py          the default run
  configs/cross_attn.py:smoke    a few steps on a tiny synthetic tree, for tests and install checks
  configs/cross_attn.py:visual   faces only (ablation); `:audio` audio only; combine as `:smoke,visual`
"""
import ml_collections

from configs import base


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = base.get_base_config()
  model = config.model
  model.name = 'cross_attn'
  model.modalities = ('audio', 'visual')
  model.visual_backbone = 'mobilefacenet'
  model.audio_backbone = 'zhao19'
  model.audio_window = config.data.get_ref('audio_window')
  model.d_embedding = 64
  model.d_ff = 128
  model.num_heads = 4
  model.n_ca = 2
  model.n_cv = 2
  model.num_layers = 2
  model.dropout = 0.3
  model.act = 'gelu'
  model.gated = False
  model.attention_impl = 'xla'  # or 'cudnn' on GPUs with bfloat16
  model.depthwise_impl = 'auto'
  model.dtype = config.train.get_ref('dtype')
  model.compat_reference_layers = False  # rnn_attn bug 2: the reference multv2 layers

  # Sized for the default run on a 2-core CPU (MobileFaceNet trains at ~8 frames/s there): ~15 minutes of
  # training. On GPUs raise train.batch_size (16 in the paper's recipe) and num_steps.
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 20
  config.train.batch_size = 4
  config.eval.batch_size = 8
  config.train.num_steps = 200
  config.train.log_every = 10
  config.train.eval_every = 100
  config.train.checkpoint_every = 50
  return apply_variants(config, arg)


def apply_variants(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """Applies the comma-separated variants of `arg` (smoke, audio, visual) to `config`."""
  for variant in filter(None, (a.strip() for a in arg.split(','))):
    if variant == 'smoke':
      config.data.synthetic.update(num_train=3, num_validation=2, num_test=1, min_frames=48, max_frames=64)
      config.data.num_workers = 0
      config.data.window = 8
      config.model.update(d_embedding=16, d_ff=16, num_heads=2, n_ca=1, n_cv=1, num_layers=1)
      config.train.update(batch_size=4, num_steps=6, log_every=2, eval_every=3, checkpoint_every=3)
      config.optim.warmup_steps = 2
      config.eval.batch_size = 4
    elif variant in ('audio', 'visual'):
      config.model.modalities = (variant,)
    else:
      raise ValueError(f'unknown config variant {variant!r} in get_config({arg!r}); '
                       'known variants: smoke, audio, visual')
  return config
