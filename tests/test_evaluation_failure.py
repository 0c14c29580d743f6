"""Evaluation runs after the checkpoint of its step is saved: an evaluation that fails (here on a damaged
validation shard) costs no training."""
import pathlib

import pytest

from affjax.data import prepare, records as records_lib
from affjax.train import loop
from test_nonfinite import saved_steps
from test_train_loop import smoke_config


def test_evaluation_failing_on_a_damaged_validation_shard_keeps_the_checkpoint_of_its_step(tiny_tree, tmp_path):
  config = smoke_config(tiny_tree, tmp_path)
  config.train.update(num_steps=4, eval_every=2, checkpoint_every=100, log_every=1)
  records = prepare.input_dir(config)  # builds them
  shards = sorted(pathlib.Path(records).glob('*validation.array_record*'))
  assert shards
  for shard in shards:  # corrupted in place (same size, so that opening the records does not notice)
    data = bytearray(shard.read_bytes())
    data[len(data) // 4:] = bytes(len(data) - len(data) // 4)
    shard.write_bytes(bytes(data))
  with pytest.raises(records_lib.DamagedRecordsError):
    loop.train_and_evaluate(config, tmp_path / 'run')
  assert saved_steps(tmp_path / 'run') == [2]  # the two steps before the evaluation are kept
