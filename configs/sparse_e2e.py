"""Sparse end-to-end audio-visual model (Dai et al., NAACL 2021), adapted to per-frame valence/arousal.

Spec `../shared/specs/sparse_e2e.md` §5: VGG trunks on 48x48 faces and 128x32 log-mel patches, whose last
three stages run only on the sites a cross-modal additive attention keeps (nucleus top-p, per frame).
Variants through `get_config(arg)`, comma-separated (applied in the order of `VARIANTS`, whatever the order given:
configs/variants.py):
  configs/sparse_e2e.py            the default run (sparse, masked-dense stages; sized for a 2-core CPU)
  configs/sparse_e2e.py:smoke      a few steps on a tiny synthetic tree, for tests and install checks
  configs/sparse_e2e.py:gather     fixed-capacity gather/matmul/scatter stages (real FLOP savings)
  configs/sparse_e2e.py:dense      the dense FE2E trunk (no scorers, every site)
  configs/sparse_e2e.py:full       the spec's widths (64-channel trunks, 4 layers, FF 2048), for GPUs
What the CPU default changes from the spec's recipe, and why: trunks 8 channels wide instead of 64 (1/64 of the
convolution MACs), 16-token windows and 2 encoder layers, so that 400 steps fit a 2-core CPU in minutes; for so
few steps Adam at 1e-3 with a cosine decay instead of a constant 5e-5 (`:full` keeps the spec's).
"""
import ml_collections

from configs import base, variants


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = base.get_base_config()
  data = config.data
  data.view = 'tokens'  # windows of tokens at model.token_rate_hz (affjax.data.views.tokens, spec §5.1)
  data.image_size = 48
  data.window = 16  # tokens (1.6 s at 10 Hz); 128 in the spec (:full)
  data.train_hop = 16
  data.eval_hop = 8  # evaluation windows overlap by half; overlapping token predictions are averaged
  data.require_face = False  # a token counts when annotated; the audio stream predicts faceless ones
  data.augment.update(brightness=0.0, contrast=0.0, saturation=0.0, flip=False)  # spec §5.1: none by default

  model = config.model
  model.name = 'sparse_e2e'
  model.image_size = data.get_ref('image_size')
  model.token_rate_hz = 10.0  # token j at t = j / 10 s takes frame round(t·fps) and the log-mel around t
  model.width = 8  # 64 in the spec; 8 keeps the default run on a 2-core CPU (1/64 of the trunk conv MACs)
  model.d_model = 64
  model.mlp_hidden = 128  # 1024 in the spec
  model.sparse = True
  model.sparse_impl = 'masked_dense'  # or 'gather'
  model.top_p = 0.8  # nucleus mass kept per stage and frame
  # top_p annealed linearly from 1 (no pruning) to model.top_p over the first steps, so that the scorers and
  # trunks learn before pruning starts (experiments/sparse_e2e/README.md); 0 = prune at top_p from step 0.
  # Gather models run these steps with masked-dense stages whose capacity is annealed to model.capacity too.
  model.top_p_warmup_steps = 100
  model.capacity = 0.4  # sites per stage and frame the gather stages compute (fraction of H·W)
  model.scma_grad = 'renorm'  # kept features weighted by the renormalised attention (fix B2)
  model.query = 'cross'  # or 'learned', 'self'
  model.num_layers = 2
  model.num_heads = 4
  model.d_ff = 256
  model.dropout = 0.1
  model.dtype = config.train.get_ref('dtype')

  # Spec §5.3 loss: sum over V and A of 1 - CCC per window over the valid tokens, mean over the windows.
  config.loss.update(ccc_weights=(1.0, 1.0), per_window=True)
  # Spec recipe: Adam 5e-5, no decay, no schedule, batch 8 x 128 tokens, 40 epochs (`:full`). The default run is
  # a short CPU run on the synthetic tree (400 steps of 4 x 16 tokens), so it uses a 20x larger rate with a cosine
  # decay: at 5e-4 and 200 steps the face stream had not learned (validation CCC valence 0.22; at 1e-3 and 400
  # steps 0.75, experiments/default_runs_cpu.md).
  config.optim.learning_rate = 1e-3
  config.optim.weight_decay = 0.0
  config.optim.warmup_steps = 10
  base.set_run_length(config, batch_size=4, eval_batch_size=8, num_steps=400, log_every=10,
                      eval_every=200, checkpoint_every=50)
  return variants.apply(config, arg, VARIANTS)


def _full(config: ml_collections.ConfigDict) -> None:
  config.model.update(width=64, mlp_hidden=1024, num_layers=4, d_ff=2048, top_p_warmup_steps=2000)
  config.optim.update(learning_rate=5e-5, warmup_steps=0, restart_period=10**9)  # ~constant: no schedule
  config.train.update(batch_size=8, num_steps=20000, eval_every=1000, checkpoint_every=1000)
  config.data.update(window=128, train_hop=128, eval_hop=64)  # tokens


def _smoke(config: ml_collections.ConfigDict) -> None:
  base.use_tiny_synthetic_tree(config)
  config.data.update(window=4, train_hop=4, eval_hop=2)
  config.model.update(width=4, d_model=8, mlp_hidden=16, num_layers=1, num_heads=2, d_ff=16)
  config.train.update(batch_size=4, num_steps=6, log_every=2, eval_every=3, checkpoint_every=3)
  config.optim.warmup_steps = 2
  config.model.top_p_warmup_steps = 3
  config.eval.batch_size = 4


def _gather(config: ml_collections.ConfigDict) -> None:
  config.model.sparse_impl = 'gather'


def _dense(config: ml_collections.ConfigDict) -> None:
  config.model.sparse = False


# in the order they apply (configs/variants.py): `:full,smoke` and `:smoke,full` are both the spec's model at
# smoke size
VARIANTS = (('full', _full), ('smoke', _smoke), ('gather', _gather), ('dense', _dense))
