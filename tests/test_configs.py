"""The config schema (configs/base.py + each system's file), the variant parser and the early validation."""
import itertools
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from affjax import config_validation, systems
from configs import audio_visual, cross_attn, lfan, lstm, rjca, self_attn, sparse_e2e, variants

SYSTEMS = {'cross_attn': (cross_attn, audio_visual.VARIANTS), 'self_attn': (self_attn, audio_visual.VARIANTS),
           'lstm': (lstm, audio_visual.VARIANTS), 'rjca': (rjca, rjca.VARIANTS), 'lfan': (lfan, lfan.VARIANTS),
           'sparse_e2e': (sparse_e2e, sparse_e2e.VARIANTS)}
PAIRS = [(system, a, b) for system, (_, listed) in SYSTEMS.items()
         for (a, _), (b, _) in itertools.combinations(listed, 2)]


@pytest.mark.parametrize('system,first,second', PAIRS)
def test_variant_order_on_the_command_line_does_not_matter(system, first, second):
  module = SYSTEMS[system][0]
  assert module.get_config(f'{first},{second}').to_dict() == module.get_config(f'{second},{first}').to_dict()


def test_variants_apply_in_the_listed_order():
  """The later variant of the list wins a field both set, whichever order the argument names them in."""
  def setter(value):
    return lambda config: config.update(x=value, **{f'set_by_{value}': True})
  listed = (('a', setter(1)), ('b', setter(2)))
  for arg in ('a,b', 'b,a', ' b , a ,'):
    config = variants.apply(ml_collections.ConfigDict(dict(x=0)), arg, listed)
    assert config.to_dict() == dict(x=2, set_by_1=True, set_by_2=True)
  assert variants.apply(ml_collections.ConfigDict(dict(x=0)), '', listed).to_dict() == dict(x=0)


@pytest.mark.parametrize('system', SYSTEMS)
def test_unknown_variant_is_named_with_the_known_ones(system):
  module, listed = SYSTEMS[system]
  known = ', '.join(name for name, _ in listed)
  with pytest.raises(ValueError, match=rf"unknown config variant 'tiny', 'zz' in get_config\('smoke,zz,tiny'\); "
                                       rf'known variants: {known}$'):
    module.get_config('smoke,zz,tiny')


def test_smoke_shrinks_the_paper_recipe():
  """The documented rule (README, configs/variants.py): the size of `:smoke`, the rest of `:paper`."""
  config = rjca.get_config('smoke,paper')
  assert (config.data.num_clips, config.data.image_size, config.train.batch_size) == (2, 32, 4)  # smoke's
  assert (config.train.dtype, tuple(config.model.frozen)) == ('bfloat16', ('visual', 'audio'))  # the paper's
  config = self_attn.get_config('smoke,paper')
  assert (config.model.d_embedding, config.train.num_steps) == (16, 6)
  assert (tuple(config.eval.selection_weights), config.optim.restart_period) == ((0.75, 0.25), 200)


@pytest.mark.parametrize('system', SYSTEMS)
def test_system_configs_only_add_to_the_base_schema(system):
  """A system's config declares its own fields on top of base; the model holds no copy of a compat flag."""
  from configs import base  # pylint: disable=g-import-not-at-top

  def paths(tree, prefix=''):
    for key, value in tree.items():
      yield from paths(value, f'{prefix}{key}.') if isinstance(value, dict) else [prefix + key]

  config = SYSTEMS[system][0].get_config('').to_dict()
  assert set(paths(base.get_base_config().to_dict())) <= set(paths(config))
  assert not [field for field in config['model'] if field.startswith('compat')]


@pytest.mark.parametrize('system,flag,read', [
    ('cross_attn', 'multv2_reference_layers', lambda m: m.fusion['compat_reference_layers']),
    ('self_attn', 'vggface2_rgb01_norm', lambda m: m.compat_vggface2_rgb01_norm),
    ('rjca', 'scrambled_spatial_view', lambda m: m.fusion_config['compat_scrambled_spatial_view']),
    ('rjca', 'audio_guidance_on_position_axis', lambda m: m.fusion_config['compat_audio_guidance_on_position_axis']),
    ('lfan', 'follower_qv_from_key', lambda m: m.compat_follower_qv_from_key),
    ('lfan', 'frozen_bn_train_mode', lambda m: m.compat_frozen_bn_train_mode),
])
def test_model_reads_compat_flags_from_config_compat(system, flag, read):
  config = SYSTEMS[system][0].get_config('smoke')
  if system == 'lfan':
    config.model.feature_norm.update(vggish=(0.0, 1.0), mfcc=(0.0, 1.0))  # computed from the records in a run
  assert read(systems.build_model(config.model, config.compat)) is False
  config.compat[flag] = True
  assert read(systems.build_model(config.model, config.compat)) is True


@pytest.mark.parametrize('system,field,value,message', [
    ('rjca', 'model.num_iterations', 0, 'config.model.num_iterations=0 must be >= 1'),
    ('sparse_e2e', 'model.top_p', 1.5, r'config.model.top_p=1.5 must be in \(0, 1\]'),
    ('cross_attn', 'model.act', 'tanhh', "config.model.act='tanhh'"),
    ('lfan', 'model.feature_norm.mfcc', (0.0, 0.0), 'the standard deviation must be > 0'),
    ('lfan', 'model.followers', ('vggish', 'mfcc', 'hubert'), r'config.model.followers\[2\]'),
    ('lfan', 'train.recipe', 'epoch', "config.train.recipe='epoch' is invalid"),
])
def test_model_and_view_checks_run_with_the_config_validation(system, field, value, message):
  config = SYSTEMS[system][0].get_config('smoke')
  *sections, name = field.split('.')
  section = config
  for part in sections:
    section = section[part]
  section[name] = value
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate(config)


def test_compact_frames_take_no_crop():
  """Checked with the config, no longer when the compacted training windows are made."""
  config = lstm.get_config('smoke')
  config.compat.compact_frames, config.data.crop_size = True, 16
  with pytest.raises(config_validation.ConfigError, match='config.data.crop_size=16 is invalid: config.compat.compact'):
    config_validation.validate(config)
  config.data.crop_size = 0
  config_validation.validate(config)


def test_bad_model_field_stops_the_run_before_anything_is_written(tmp_path):
  """LFAN's audio window used to be checked when its model was built: after the records and VGGish features."""
  run = subprocess.run([sys.executable, '-m', 'affjax.main', '--config=configs/lfan.py:smoke',
                        '--config.data.audio_window=1000', f'--config.data.cache_dir={tmp_path / "cache"}',
                        f'--workdir={tmp_path / "run"}'], capture_output=True, text=True,
                       cwd=pathlib.Path(__file__).parents[1], timeout=300)
  assert run.returncode != 0
  assert run.stderr.strip().splitlines()[-1].startswith('error: config.data.audio_window=1000: the MFCC follower')
  assert list(tmp_path.iterdir()) == []
