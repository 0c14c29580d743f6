"""Leader-follower attentive fusion: IR-50 + causal TCNs over 300-frame windows (Zhang et al., ABAW2 2021).

Spec `../shared/specs/lfan.md`. Variants through `get_config(arg)`, comma-separated:
  configs/lfan.py             the default run (synthetic tree unless --config.data.manual_dir is set)
  configs/lfan.py:smoke       a few steps on a tiny synthetic tree, for tests and install checks
  configs/lfan.py:valence     one model for valence only (the paper: one model per emotion); `:arousal` likewise
  configs/lfan.py:visual      no audio followers (the unimodal `my_2d1d`)
"""
import ml_collections

from affjax.data import audio_features
from configs import base


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = base.get_base_config()
  data = config.data
  data.image_size = 48  # faces are resized to 48 x 48 ...
  data.crop_size = 40  # ... and cropped to 40 x 40: one random crop per training window, the centre one in evaluation
  data.window = 300
  data.train_hop = 200
  data.eval_hop = 200
  data.audio_window = audio_features.FRAME_MFCC_SAMPLES  # the samples one frame's 39-d MFCC row needs
  data.require_face = False  # the reference trains on every labelled frame (a missing face is a black image)
  data.augment = ml_collections.ConfigDict(dict(brightness=0.0, contrast=0.0, saturation=0.0, flip=True))

  config.compat.follower_qv_from_key = False  # lfan bug 2: followers' queries and values from their keys
  config.compat.frozen_bn_train_mode = False  # lfan bug 1: frozen IR-50 BatchNorm/dropout in train mode

  model = config.model
  model.name = 'lfan'
  model.followers = ('mfcc',)
  model.feature_norm = ml_collections.ConfigDict(dict(mfcc=(0.0, 1.0)))  # (mean, std) of the training partition
  model.audio_window = data.get_ref('audio_window')
  model.visual_channels = (128, 128, 128, 128)
  model.follower_channels = (32, 32, 32, 32)
  model.kernel_size = 5
  model.tcn_dropout = 0.1
  model.fusion_dim = 32
  model.emotion = 'both'  # 'valence' | 'arousal': one model per emotion, as the paper
  model.released = 1  # IR-50 layer groups that train: 1 = the head (released at epoch 0), up to 3
  model.ir50_units = (3, 4, 14, 3)  # IR-50's units per stage
  model.dtype = config.train.get_ref('dtype')
  model.compat_follower_qv_from_key = config.compat.get_ref('follower_qv_from_key')
  model.compat_frozen_bn_train_mode = config.compat.get_ref('frozen_bn_train_mode')

  config.loss.per_window = True  # 1 - CCC per window, averaged over windows (spec lfan 4)

  optim = config.optim
  optim.learning_rate = 1e-5
  optim.coupled_weight_decay = True  # PyTorch Adam(weight_decay=1e-3)
  optim.weight_decay = 1e-3
  optim.warmup_steps = 0
  optim.host_learning_rate = True  # set per epoch by the plateau schedule

  train = config.train
  train.recipe = 'epochs'  # affjax.train.epochs: plateau, revert to best, gradual release, early stopping
  train.num_epochs = 100
  train.plateau_patience = 5
  train.plateau_factor = 0.1
  train.cuts_per_release = 2  # plateau LR cuts before the next IR-50 group is released
  train.early_stop = 20  # epochs without a new best validation CCC
  train.revert_to_best = True

  # The paper: batch 8 of 300-frame windows on a GPU. On a 2-core CPU the frozen IR-50 forward runs at tens of
  # frames/s, so the default synthetic run is short; on GPUs raise batch_size to 8 and num_steps.
  base.set_run_length(config, batch_size=2, eval_batch_size=4, num_steps=40, log_every=5,
                      eval_every=20, checkpoint_every=20)
  return apply_variants(config, arg)


def apply_variants(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """Applies the comma-separated variants of `arg` (smoke, valence, arousal, visual) to `config`."""
  for variant in filter(None, (a.strip() for a in arg.split(','))):
    if variant == 'smoke':
      base.use_tiny_synthetic_tree(config)
      config.data.update(image_size=32, crop_size=16, window=16, train_hop=16, eval_hop=8)  # IR-50 at 16 x 16
      config.model.update(visual_channels=(16, 16), follower_channels=(8, 8), fusion_dim=8, ir50_units=(1, 1, 1, 1))
      config.train.update(batch_size=4, num_steps=3, log_every=1, eval_every=3, checkpoint_every=1, num_epochs=2,
                          plateau_patience=0, cuts_per_release=1)
      config.eval.batch_size = 4
      config.optim.learning_rate = 1e-4
    elif variant in ('valence', 'arousal'):
      config.model.emotion = variant
      config.loss.ccc_weights = (1.0, 0.0) if variant == 'valence' else (0.0, 1.0)
      config.eval.selection_weights = config.loss.ccc_weights
    elif variant == 'visual':
      config.model.followers = ()
    else:
      raise ValueError(f'unknown config variant {variant!r} in get_config({arg!r}); '
                       'known variants: smoke, valence, arousal, visual')
  return config
