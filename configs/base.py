"""The config schema: every field that shared code reads whatever the system, declared once with its default. Each
system's config (configs/<system>.py) starts from `get_base_config()` and declares its own fields on top, once:
its model, the compat flags its model implements, and the fields of a recipe or schedule only it uses so far
(LFAN's `train.recipe='epochs'`, RJCA's `optim.schedule='epoch_step'`). configs/variants.py applies variants.

Every field is overridable from the command line, e.g. `--config.train.batch_size=32`; a field that no config
declares stops the run naming the closest known ones (affjax.main).
"""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.manual_dir = ''  # the Aff-Wild2 release tree; '' trains on the synthetic tree (generated once)
  data.cache_dir = '~/.cache/affjax'  # synthetic trees and records live here unless records_dir is set
  data.records_dir = ''  # where the ArrayRecord shards are written; '' = <cache_dir>/records/<source>
  data.view = 'frames'  # what a window holds: 'frames', 'clips' (RJCA) or 'tokens' (sparse_e2e)
  data.features_dir = ''  # a feature cache (tools/cache_features.py) to train the fusion on, instead of the frames
  data.side_features_dir = ''  # a feature cache joined to the frame records' windows (LFAN: tools/vggish_features.py)
  data.fold = -1  # 0..5: LFAN's cross-validation fold (affjax.data.folds.fold_split); -1: the official partitions
  data.test_list = 'va_test_set.txt'  # test video names, relative to manual_dir (or absolute)
  data.chunk_size = 32  # frames per record; fixed when the records are built
  data.window = 8  # T, frames per training/evaluation window
  data.train_hop = 8  # hop between training windows (= window: no overlap, padded tail window)
  data.eval_hop = 4  # hop between evaluation windows; overlapping predictions are averaged
  data.image_size = 112
  data.crop_size = 0  # > 0: a random crop of this size per training window, the centre one in evaluation (0 = none)
  data.audio_window = 10560  # int(16000 * 0.66) samples centred on each frame
  data.min_fps = 24.0  # lowest frame rate a window's audio segment is sized for
  data.num_workers = 2  # grain worker processes (0 = decode in the training process)
  data.worker_buffer_size = 2
  data.require_face = True  # train only on frames that have a face crop (evaluation scores every annotated frame)
  data.augment = ml_collections.ConfigDict(dict(brightness=0.2, contrast=0.2, saturation=0.2, flip=True))
  data.synthetic = ml_collections.ConfigDict(dict(
      num_train=12, num_validation=4, num_test=2, min_frames=240, max_frames=480, seed=0))

  # what code outside a system reads; each system declares the rest of its model on top (configs/<system>.py)
  config.model = model = ml_collections.ConfigDict()
  model.name = ''  # the system (affjax.systems: a package's name or a module path), set by its config
  model.modalities = ('audio', 'visual')  # the inputs the model reads
  model.frozen = ()  # backbones held fixed (running-average BatchNorm, no gradients), e.g. ('visual', 'audio')
  model.pretrained = ml_collections.ConfigDict()  # per model part, a tools/convert_torch.py output; '' = random

  config.loss = ml_collections.ConfigDict()
  config.loss.ccc_weights = (0.5, 0.5)  # (valence, arousal) weights of 1 - CCC
  config.loss.mse_weight = 0.0
  config.loss.aux_weight = 0.0  # weight of the auxiliary head's cross-entropy (models that have one)
  config.loss.per_window = False  # 1 - CCC per window, averaged over the windows (else over the batch's frames)

  config.optim = optim = ml_collections.ConfigDict()
  optim.learning_rate = 1e-3
  optim.weight_decay = 1e-2  # AdamW, decoupled, scaled by the learning rate
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8
  optim.warmup_steps = 50
  optim.restart_period = 0  # T0 of cosine warm restarts in steps; 0 = one cosine decay over the run
  optim.grad_clip_norm = 0.0  # 0 = no clipping
  optim.finetune_learning_rate = 1e-4  # every parameter's rate after train.unfreeze_step
  optim.schedule = 'cosine'  # or 'epoch_step' (RJCA's: configs/rjca.py declares its fields)
  optim.coupled_weight_decay = False  # True: PyTorch Adam's L2 term in the gradient instead of AdamW's decay
  optim.host_learning_rate = False  # True: the rate is set from the host (the epoch recipe's plateau schedule)

  config.train = train = ml_collections.ConfigDict()
  train.recipe = 'steps'  # or 'epochs' (affjax.train.recipe_epochs: plateau, revert to best, release, early stop)
  train.batch_size = 16  # global, over every device of every host
  train.num_steps = 1000
  train.log_every = 25
  train.eval_every = 250
  train.checkpoint_every = 250
  train.unfreeze_step = 0  # > 0: model.frozen parts train from this step on (two-stage fine-tuning)
  train.keep_checkpoints = 1  # latest N kept, plus the best by validation mean CCC and the newest good one
  train.on_nonfinite = 'stop'  # a non-finite loss or state: 'stop', or 'rollback' to the newest good checkpoint
  train.max_rollbacks = 3  # with on_nonfinite='rollback': at most this many rollbacks per run, then stop
  train.dtype = 'float32'  # compute dtype of the backbones: float32 | bfloat16
  train.profile_steps = 0  # > 0: capture a jax.profiler trace of this many steps after `first_profile`
  train.first_profile = 10

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 16
  config.eval.splits = ('validation',)  # splits scored (and written as ABAW files) by --mode=eval
  config.eval.selection_weights = (0.5, 0.5)  # (valence, arousal) weights of the validation CCC picking the best
  config.eval.smooth = (0, 0)  # moving-average sizes (valence, arousal) over whole videos; RJCA's reference: (20, 50)

  # reference quirks (all False: fixed) that shared code implements; a system declares those of its model
  config.compat = compat = ml_collections.ConfigDict()
  compat.integer_fps = False  # rnn_attn bug 18: audio centres from the frame rate rounded (29.97 -> 30)
  compat.compact_frames = False  # rnn_attn bug 15: training windows of annotated frames with a face only
  compat.arousal_ccc_on_cat_logit = False  # rnn_attn bug 1: arousal CCC scored on logit 1 of the 24-class head
  return config


def use_tiny_synthetic_tree(config: ml_collections.ConfigDict) -> None:
  """The `:smoke` data: a tiny synthetic tree (3 train, 2 validation, 1 test video of 48-64 frames), decoded
  in the training process."""
  config.data.synthetic.update(num_train=3, num_validation=2, num_test=1, min_frames=48, max_frames=64)
  config.data.num_workers = 0


def set_run_length(config: ml_collections.ConfigDict, *, batch_size: int, eval_batch_size: int,
                   num_steps: int, log_every: int, eval_every: int, checkpoint_every: int) -> None:
  """Batch sizes and the step schedule of a run (each system's default run is sized for a 2-core CPU)."""
  config.train.update(batch_size=batch_size, num_steps=num_steps, log_every=log_every, eval_every=eval_every,
                      checkpoint_every=checkpoint_every)
  config.eval.batch_size = eval_batch_size
