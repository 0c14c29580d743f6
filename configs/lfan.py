"""Leader-follower attentive fusion: IR-50 + causal TCNs over 300-frame windows (Zhang et al., ABAW2 2021).

Spec `../shared/specs/lfan.md`. Variants through `get_config(arg)`, comma-separated (applied in the order of
`VARIANTS`, whatever the order given: configs/variants.py):
  configs/lfan.py             the default run, sized for a CPU: the paper's model with a one-unit-per-stage IR-50
                              whose three release groups train from epoch 0 (the paper starts with the head of a
                              pretrained IR-50; none exists for synthetic faces), lr 1e-3, two epochs (synthetic
                              tree unless --config.data.manual_dir is set)
  configs/lfan.py:paper       the paper's run for GPUs: IR-50 (3, 4, 14, 3), batch 8, lr 1e-5, up to 100 epochs
  configs/lfan.py:smoke       a few steps on a tiny synthetic tree, for tests and install checks
  configs/lfan.py:valence     one model for valence only (the paper: one model per emotion); `:arousal` likewise
  configs/lfan.py:visual      no audio followers (the unimodal `my_2d1d`)
Cross-validation: `--config.data.fold=K` (K in 0..5) trains fold K; `tools/train_folds.py` trains all six.
"""
import ml_collections

from affjax.models.audio import mfcc
from configs import base, variants


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = base.get_base_config()
  data = config.data
  data.image_size = 48  # faces are resized to 48 x 48 ...
  data.crop_size = 40  # ... and cropped to 40 x 40: one random crop per training window, the centre one in evaluation
  data.window = 300
  data.train_hop = 200
  data.eval_hop = 200
  data.audio_window = mfcc.FRAME_MFCC_SAMPLES  # the samples one frame's 39-d MFCC row needs
  data.require_face = False  # the reference trains on every labelled frame (a missing face is a black image)
  data.augment = ml_collections.ConfigDict(dict(brightness=0.0, contrast=0.0, saturation=0.0, flip=True))

  config.compat.follower_qv_from_key = False  # lfan bug 2: followers' queries and values from their keys
  config.compat.frozen_bn_train_mode = False  # lfan bug 1: frozen IR-50 BatchNorm/dropout in train mode

  model = config.model
  model.name = 'lfan'
  model.followers = ('vggish', 'mfcc')  # VGGish from feature records built once (affjax.systems.lfan.followers)
  # (mean, std) per follower; () = the training partition's (the fold's), computed at the start of a run
  model.feature_norm = ml_collections.ConfigDict(dict(vggish=(), mfcc=()))
  # converted weights (tools/convert_torch.py --network=ir50 | vggish); '' = random initialisation
  model.pretrained.update(visual='', vggish='')
  model.audio_window = data.get_ref('audio_window')
  model.visual_channels = (128, 128, 128, 128)
  model.follower_channels = (32, 32, 32, 32)
  model.kernel_size = 5
  model.tcn_dropout = 0.1
  model.fusion_dim = 32
  model.emotion = 'both'  # 'valence' | 'arousal': one model per emotion, as the paper
  # IR-50 layer groups that train from epoch 0: 1 = the head (the paper, `:paper`), up to 3 (head, stage 4, the last
  # units of stage 3). The CPU default trains all three: no MS-Celeb/FER+ IR-50 exists for synthetic faces, and
  # a random IR-50 whose head alone trains learnt no valence (validation CCC 0.06; all three: 0.78).
  model.released = 3
  model.ir50_units = (1, 1, 1, 1)  # units per stage; the paper's IR-50 is (3, 4, 14, 3) (`:paper`)
  model.dtype = config.train.get_ref('dtype')

  config.loss.per_window = True  # 1 - CCC per window, averaged over windows (spec lfan 4)

  optim = config.optim
  optim.learning_rate = 1e-3  # for the CPU run's few dozen steps (`:paper`: the paper's 1e-5)
  optim.coupled_weight_decay = True  # PyTorch Adam(weight_decay=1e-3)
  optim.weight_decay = 1e-3
  optim.warmup_steps = 0
  optim.host_learning_rate = True  # set per epoch by the plateau schedule

  train = config.train
  train.recipe = 'epochs'  # affjax.train.recipe_epochs: plateau, revert to best, gradual release, early stopping
  train.num_epochs = 2  # the paper: up to 100 (`:paper`)
  train.plateau_patience = 5
  train.plateau_factor = 0.1
  train.cuts_per_release = 2  # plateau LR cuts before the next IR-50 group is released
  train.early_stop = 20  # epochs without a new best validation CCC
  train.revert_to_best = True

  # The paper: batch 8 of 300-frame windows on a GPU (`:paper`). On a shared 2-core CPU the full IR-50 forward ran at
  # 9 frames/s (a one-unit-per-stage IR-50 is 4.6x cheaper), so the default run is two epochs of the synthetic tree's
  # 12 steps of 2 windows (the epoch recipe ignores num_steps).
  base.set_run_length(config, batch_size=2, eval_batch_size=4, num_steps=40, log_every=5,
                      eval_every=20, checkpoint_every=20)
  return variants.apply(config, arg, VARIANTS)


def _paper(config: ml_collections.ConfigDict) -> None:
  config.model.update(ir50_units=(3, 4, 14, 3), released=1)
  config.train.update(batch_size=8, num_epochs=100)
  config.eval.batch_size = 8
  config.optim.learning_rate = 1e-5


def _smoke(config: ml_collections.ConfigDict) -> None:
  base.use_tiny_synthetic_tree(config)
  config.data.update(image_size=32, crop_size=16, window=16, train_hop=16, eval_hop=8)  # IR-50 at 16 x 16
  config.model.update(visual_channels=(16, 16), follower_channels=(8, 8), fusion_dim=8, ir50_units=(1, 1, 1, 1),
                      released=1)  # the head first, so that a smoke run goes through a release
  config.train.update(batch_size=4, num_steps=3, log_every=1, eval_every=3, checkpoint_every=1, num_epochs=2,
                      plateau_patience=0, cuts_per_release=1)
  config.eval.batch_size = 4
  config.optim.learning_rate = 1e-4


def _one_emotion(emotion: str) -> variants.Variant:
  def variant(config: ml_collections.ConfigDict) -> None:
    config.model.emotion = emotion
    config.loss.ccc_weights = (1.0, 0.0) if emotion == 'valence' else (0.0, 1.0)
    config.eval.selection_weights = config.loss.ccc_weights
  return variant


def _visual(config: ml_collections.ConfigDict) -> None:
  config.model.followers = ()


# in the order they apply (configs/variants.py): `:paper,smoke` and `:smoke,paper` are both the paper's run at
# smoke size
VARIANTS = (('paper', _paper), ('smoke', _smoke), ('valence', _one_emotion('valence')),
            ('arousal', _one_emotion('arousal')), ('visual', _visual))
