"""affjax.pretrained (tools/export_backbones.py): a trained run's backbones, loaded through model.pretrained, are
that run's."""
import jax
import numpy as np
import optax

from affjax import parallel, pretrained, systems
from affjax.models import torch_convert
from affjax.train import loop, state as state_lib
from configs import cross_attn


def audio_config(tiny_tree, tmp_path, variant):
  config = cross_attn.get_config(variant)
  config.data.update(manual_dir=str(tiny_tree), records_dir=str(tmp_path / 'records'))
  config.train.update(num_steps=4, eval_every=2, checkpoint_every=2)
  return config


def test_exported_backbone_is_the_best_checkpoints_and_loads_into_a_frozen_run(tiny_tree, tmp_path):
  trained = audio_config(tiny_tree, tmp_path, 'smoke,audio')
  loop.train_and_evaluate(trained, tmp_path / 'run')
  written = pretrained.export_backbones(trained, str(tmp_path / 'run'), str(tmp_path / 'export'))
  assert set(written) == {'audio'}

  exp = loop.Experiment(trained, tmp_path / 'run')
  try:
    step = exp.restore_for_evaluation()
    best = jax.device_get(exp.state)
  finally:
    exp.close()
  assert step == exp.checkpoints.best_step()
  exported = torch_convert.read_variables(str(written['audio']))
  jax.tree.map(np.testing.assert_array_equal, exported['params'], best.params['audio'])
  jax.tree.map(np.testing.assert_array_equal, exported['batch_stats'], best.batch_stats['audio'])

  frozen = audio_config(tiny_tree, tmp_path, 'smoke,audio,frozen')
  frozen.model.pretrained.audio = str(written['audio'])
  frozen.seed = 1  # another initialisation: only the loaded backbone may equal the run's
  model = systems.build_model(frozen.model, frozen.compat)
  state = jax.device_get(state_lib.initial_state(model, optax.identity(), frozen, parallel.make_mesh(), frozen.seed))
  jax.tree.map(np.testing.assert_array_equal, state.params['audio'], best.params['audio'])
  fusion_init, fusion_trained = (jax.tree.leaves(p['fusion'])[0] for p in (state.params, best.params))
  assert not np.array_equal(fusion_init, fusion_trained)

