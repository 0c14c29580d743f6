"""What the three fusion systems of the Karas et al. study share (spec rnn_attn): per-frame MobileFaceNet +
Zhao19 backbones, the fusion `name` picks (cross_attn | self_attn | lstm), the V/A head and the optional
24-class auxiliary head, and the training schemes. `configs/{cross_attn,self_attn,lstm}.py` build on it.

Variants (comma-separated, e.g. `configs/lstm.py:smoke,frozen`; applied in the order of `VARIANTS`, whatever the
order given: configs/variants.py):
  smoke      a few steps on a tiny synthetic tree (tests, install checks)
  audio      audio only; `visual`: faces only (ablations)
  frozen     backbones frozen (BatchNorm running averages, no gradients, held by the optimiser's mask)
  finetune   two stages: backbones frozen for the first half, then everything at optim.finetune_learning_rate
  aux        the auxiliary 24-class head with its weighted cross-entropy (loss.aux_weight = 1)
  paper      Recipe A of the paper's grid (spec rnn_attn 4) for GPUs: batch 16, AdamW with cosine warm restarts
             (T0 = 200 steps), CCC weighted 0.75/0.25 in the loss and the selection, 10 epochs of Aff-Wild2, bfloat16 backbones; the searched
             hyperparameters at mid-grid values (d = d_ff = 128, 4 layers, 4 heads, lr 3e-4, decay 1e-2)

What the CPU default changes from the paper's recipe, and why: the backbones, the fusion and the end-to-end
training are the paper's; the run is sized to train in minutes on a 2-core CPU (MobileFaceNet trains at about 27
frames/s there): batch 4 for 200 steps instead of 16 for 10 Aff-Wild2 epochs, fusion width 64 with 2 layers
instead of 128 with 4, lr 1e-3 with 20 warm-up steps and one cosine decay instead of 3e-4 with warm restarts
(a short run needs the larger step), the CCC loss weighted 0.5 / 0.5 without the MSE term, and float32 (the CPU
has no fast bfloat16). `:paper` keeps the paper's.
"""
import ml_collections

from configs import base, variants

AFFWILD2_STEPS_PER_EPOCH = 12_500  # ~1.6 M training frames in windows of 8, batch 16


def audio_visual_config(name: str) -> ml_collections.ConfigDict:
  config = base.get_base_config()
  model = config.model
  model.name = name
  model.visual_backbone = 'mobilefacenet'  # or inceptionresnetv1 (112/160 px), vggface2_resnet50 / _senet50 (224 px)
  model.audio_backbone = 'zhao19'
  model.audio_window = config.data.get_ref('audio_window')
  model.depthwise_impl = 'auto'
  model.dtype = config.train.get_ref('dtype')
  model.d_embedding = 64
  model.num_layers = 2
  model.dropout = 0.3
  model.act = 'gelu'
  model.num_bins = 1  # > 1: V/A as the expectation over a softmax on num_bins bins in [-1, 1]
  model.aux_classes = 0  # 24: the auxiliary discretised head (train it with loss.aux_weight > 0)
  model.pretrained.update(visual='', audio='')  # tools/convert_torch.py outputs
  config.compat.vggface2_rgb01_norm = False  # rnn_attn bug 7: [0,1] RGB minus the BGR mean / 255 (VGGFace2 nets)

  # Sized for the default run on a 2-core CPU (see the docstring); `:paper` for GPUs.
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 20
  base.set_run_length(config, batch_size=4, eval_batch_size=8, num_steps=200, log_every=10,
                      eval_every=100, checkpoint_every=50)
  return config


def _paper(config: ml_collections.ConfigDict) -> None:
  config.model.update(d_embedding=128, num_layers=4)
  _update_present(config.model, d_ff=128, num_heads=4, n_ca=4, n_cv=4)
  config.optim.update(learning_rate=3e-4, weight_decay=1e-2, warmup_steps=0, restart_period=200)
  config.loss.update(ccc_weights=(0.375, 0.125), mse_weight=0.5)  # 0.5 [0.75 (1 - CCC_v) + 0.25 (1 - CCC_a)]
  config.eval.selection_weights = (0.75, 0.25)  # the grid's selection metric
  epoch = AFFWILD2_STEPS_PER_EPOCH
  base.set_run_length(config, batch_size=16, eval_batch_size=64, num_steps=10 * epoch, log_every=100,
                      eval_every=epoch, checkpoint_every=epoch // 5)
  config.train.dtype = 'bfloat16'


def _smoke(config: ml_collections.ConfigDict) -> None:
  base.use_tiny_synthetic_tree(config)
  config.data.window = 8
  config.model.update(d_embedding=16, num_layers=1)
  _update_present(config.model, d_ff=16, num_heads=2, n_ca=1, n_cv=1)
  config.train.update(batch_size=4, num_steps=6, log_every=2, eval_every=3, checkpoint_every=3)
  config.optim.warmup_steps = 2
  config.eval.batch_size = 4


def _frozen(config: ml_collections.ConfigDict) -> None:
  config.model.frozen = tuple(config.model.modalities)


def _finetune(config: ml_collections.ConfigDict) -> None:
  _frozen(config)
  config.train.unfreeze_step = config.train.num_steps // 2


def _aux(config: ml_collections.ConfigDict) -> None:
  config.model.aux_classes = 24
  config.loss.aux_weight = 1.0


def _one_modality(modality: str) -> variants.Variant:
  def variant(config: ml_collections.ConfigDict) -> None:
    config.model.modalities = (modality,)
  return variant


# in the order they apply (configs/variants.py): the sizes first, then the modality, then what builds on both
VARIANTS = (('paper', _paper), ('smoke', _smoke), ('audio', _one_modality('audio')),
            ('visual', _one_modality('visual')), ('frozen', _frozen), ('finetune', _finetune), ('aux', _aux))


def _update_present(section: ml_collections.ConfigDict, **values) -> None:
  """Sets the fields of `values` that `section` has (the fusions differ in their attention fields)."""
  section.update({k: v for k, v in values.items() if k in section})
