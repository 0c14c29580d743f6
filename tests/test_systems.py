"""The system registry (`affjax.systems`): built-in systems found by name, unknown names named, and a system
defined in a test module (tests/toy_system.py) trained and evaluated through `python -m affjax.main` without any
edit of `affjax/`; shared code compares no system or view name."""
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from affjax import checkpoint, config_validation, systems
from configs import cross_attn, lfan, rjca, sparse_e2e

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILT_IN = ['cross_attn', 'lfan', 'lstm', 'rjca', 'self_attn', 'sparse_e2e']


def test_each_config_finds_its_system_package_by_name():
  for module, package in ((cross_attn, 'audio_visual'), (rjca, 'rjca'), (lfan, 'lfan'), (sparse_e2e, 'sparse_e2e')):
    config = module.get_config('smoke')
    system = systems.of(config)
    assert system is sys.modules[f'affjax.systems.{package}'].SYSTEM and config.model.name in system.names
    assert config.data.view in system.views
  assert systems.get('lstm') is systems.get('self_attn') is systems.get('cross_attn')


def test_unknown_names_are_errors_naming_the_field_and_the_known_systems():
  with pytest.raises(ValueError, match=re.escape(f"config.model.name='lfam' is not one of {BUILT_IN}")):
    systems.get('lfam')
  with pytest.raises(ValueError, match="config.model.name='affjax.no_such': no module 'affjax.no_such' to import"):
    systems.get('affjax.no_such')
  with pytest.raises(ValueError, match="config.model.name='json.decoder': the module defines no SYSTEM"):
    systems.get('json.decoder')
  config = cross_attn.get_config('smoke')
  config.model.name = 'lfam'
  with pytest.raises(config_validation.ConfigError, match="config.model.name='lfam' is not one of"):
    config_validation.validate(config)


def test_a_registered_system_is_validated_with_its_view_and_its_own_checks(monkeypatch):
  monkeypatch.setattr(systems, '_REGISTRY', {})  # registered for this test only
  toy = systems.register(systems.System(names=('toy_in_process',), build=lambda model, compat: None,
                                        views=('clips',)))
  assert systems.get('toy_in_process') is toy
  with pytest.raises(ValueError, match='taken by another system'):
    systems.register(systems.System(names=('toy_in_process',), build=toy.build))
  config = cross_attn.get_config('smoke')
  config.model.name = 'toy_in_process'
  with pytest.raises(config_validation.ConfigError,
                     match="config.data.view='frames' is invalid: the toy_in_process model reads the clips view"):
    config_validation.validate(config)
  assert systems.param_labels(config.model) is None and systems.warmup_model(None, config.model) is None
  assert systems.prepare(config, '', '') is config and systems.aux_classes(config.model) == 0


def test_a_system_defined_in_a_test_module_trains_and_evaluates_through_the_entry_point(tiny_tree, tmp_path):
  workdir = tmp_path / 'run'
  run = subprocess.run(
      [sys.executable, '-m', 'affjax.main', '--config=configs/cross_attn.py:smoke',
       '--config.model.name=tests.toy_system', f'--workdir={workdir}', f'--config.data.manual_dir={tiny_tree}',
       f'--config.data.records_dir={tmp_path / "records"}', '--config.train.num_steps=4',
       '--config.train.eval_every=4', '--config.train.checkpoint_every=4', '--config.optim.warmup_steps=1'],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  saved = checkpoint.Checkpointer(workdir)
  assert saved.all_steps() == [4]
  saved.close()
  summary = json.loads((workdir / 'eval' / 'summary.json').read_text())
  assert summary['step'] == 4
  assert all(math.isfinite(summary['validation'][k]) for k in ('ccc_valence', 'ccc_arousal', 'ccc_mean'))


def test_the_toy_system_refuses_a_config_without_faces(tmp_path):
  run = subprocess.run([sys.executable, '-m', 'affjax.main', '--config=configs/cross_attn.py:smoke,audio',
                        '--config.model.name=tests.toy_system', f'--workdir={tmp_path / "run"}'],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                       timeout=300)
  assert run.returncode != 0
  assert run.stderr.strip().splitlines()[-1] == (
      "error: config.model.modalities=('audio',) is invalid: the toy model reads the faces")
  assert not (tmp_path / 'run').exists()


COMPARISON = re.compile(r"(model\.name|data\.view|view\.name)\s*(==|!=|(not\s+)?in\s*[(\[{])")


def test_shared_code_compares_no_system_or_view_name():
  """Only a system's own package (affjax/systems/<name>/) and the views (affjax/data/views/) decide on names."""
  package = ROOT / 'affjax'
  found = [f'{path.relative_to(ROOT)}:{i}: {line.strip()}'
           for path in sorted(package.rglob('*.py'))
           if not re.match(r'(systems/[a-z_0-9]+|data/views)/', path.relative_to(package).as_posix())
           for i, line in enumerate(path.read_text().splitlines(), 1) if COMPARISON.search(line)]
  assert not found, '\n'.join(found)
  assert COMPARISON.search("if config.model.name == 'lfan':") and COMPARISON.search("data.view in ('clips',)")
