"""LFAN's follower inputs (spec lfan 3.1, 3.3): the VGGish feature records, built once per record set and VGGish
weights, and the scalar statistics of every follower over the training partition of the run (its fold's).

  prepare(config, records_dir, workdir) -> config with data.side_features_dir set (VGGish built on first use) and
                                           every empty model.feature_norm entry filled (saved in the workdir)
  saved_statistics(config, workdir)     -> config with every empty model.feature_norm entry from the workdir (to
                                           predict new inputs with the training partition's statistics)
  side_features(config)                 -> the side features of any frame records, computed as the cache's (to
                                           join them to a video's in-memory records: affjax.video.views)

The VGGish follower reads `vggish_features [B, T, 128]` from a feature cache joined to the frame records
(`config.data.side_features_dir`): one VGGish forward per video frame is too costly to run in every step, and the
features do not depend on anything that trains. The MFCC follower is computed inline from the window's audio.
"""
from __future__ import annotations

import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from affjax.data import feature_cache, pipeline, prepare as prepare_lib, records as records_lib
from affjax.models import torch_convert
from affjax.models.audio import mfcc
from affjax.models.audio.frame_windows import slice_audio_windows
from affjax.models.backbones import vggish

NORM_FILE = 'feature_norm.json'
VGGISH_BATCH = 64  # examples per VGGish call (fixed, so one compilation serves every video)
VGGISH_SHAPES = {'vggish': (vggish.EMBEDDING_DIM,)}  # the feature cache's part -> per-frame shape


def followers(config) -> tuple[str, ...]:
  """The follower modalities of `config.model` (LFAN's); () for models without followers."""
  return tuple(config.model.followers) if 'followers' in config.model else ()


def side_shapes(config) -> dict[str, tuple[int, ...]]:
  """Part -> per-frame shape of the features the followers read from a feature cache joined to the frame records
  (`<part>_features`); {} when none does."""
  return dict(VGGISH_SHAPES) if 'vggish' in followers(config) else {}


def side_features(config) -> feature_cache.ChunkFeatures:
  """The function that computes the `side_shapes` features of records from their audio, as `build_vggish` fills the
  run's feature cache (the same VGGish weights, examples and batches)."""
  return feature_cache.video_features(vggish_extractor(config))


def vggish_variables(config) -> dict:
  """VGGish's variables: the converted file `config.model.pretrained.vggish` (tools/convert_torch.py
  --network=vggish), else the random initialisation of `config.seed`, as every backbone here."""
  net = vggish.VGGish()
  example = jnp.zeros((1, vggish.EXAMPLE_FRAMES, vggish.MEL_BANDS), jnp.float32)
  abstract = jax.eval_shape(net.init, jax.random.key(config.seed), example)
  path = config.model.pretrained.vggish
  if path:
    return torch_convert.load_pretrained({'vggish': path}, {'params': {'vggish': abstract['params']}})['vggish']
  logging.warning('config.model.pretrained.vggish is empty: the VGGish features come from random weights (seed %d)',
                  config.seed)
  return jax.jit(net.init)(jax.random.key(config.seed), example)


def vggish_extractor(config) -> feature_cache.VideoExtractor:
  """(waveform, fps, frames N) -> {'vggish': [N, 128]} raw fc2 embeddings of every frame's example."""
  variables = vggish_variables(config)
  # the weights as an argument, not constants folded into the program (peak RSS 2.1 -> 1.5 GB on first use)
  embed = jax.jit(lambda v, segments: vggish.VGGish().apply(v, vggish.log_mel_examples(segments)))

  def extract(wave: np.ndarray, fps: float, num_frames: int) -> dict[str, np.ndarray]:
    x = vggish.padded_waveform(wave)
    starts = vggish.frame_example_starts(num_frames, fps, len(x))
    starts = np.pad(starts, (0, -num_frames % VGGISH_BATCH), mode='edge')  # whole batches: one compilation
    out = [np.asarray(embed(variables, x[starts[i:i + VGGISH_BATCH, None] + np.arange(vggish.EXAMPLE_SAMPLES)]))
           for i in range(0, len(starts), VGGISH_BATCH)]
    return {'vggish': np.concatenate(out)[:num_frames]}

  return extract


def default_vggish_dir(config, records_dir: str) -> pathlib.Path:
  """Next to the frame records (`<records base>/affwild2/chunk<C>/<version>`): `<records base>/vggish-<tag of the
  chunk size and the weights>`."""
  weights = config.model.pretrained.vggish or f'random-seed{config.seed}'
  base = pathlib.Path(records_dir).absolute()
  return base.parents[2] / f'vggish-{base.parent.name}-{prepare_lib.tag(dict(weights=weights))}'


def build_vggish(config, records_dir: str, out) -> pathlib.Path:
  """Computes the VGGish features of every frame of the records once (progress bar per split; a rerun over
  complete shards does nothing); returns the directory for `config.data.side_features_dir`."""
  return feature_cache.build(records_dir, out, shapes=VGGISH_SHAPES,
                             features=feature_cache.video_features(vggish_extractor(config)))


def mfcc_statistics(records: records_lib.Records, config) -> tuple[float, float]:
  """(mean, std) of the 39-d MFCC features of every frame of `records`, each frame counted once."""
  config = config.copy_and_resolve_references()
  config.data.eval_hop = config.data.window  # windows do not overlap: each frame once
  dataset, _ = pipeline.eval_dataset(records, config)
  features = jax.jit(lambda audio, offsets: mfcc.frame_mfcc(
      slice_audio_windows(audio, offsets, mfcc.FRAME_MFCC_SAMPLES)))
  moments = _Moments()
  for batch in tqdm.tqdm(dataset, desc=f'MFCC statistics ({records.split})', unit='batch'):
    x = np.asarray(features(batch['audio'], batch['audio_offsets']), np.float64)
    moments.add(x[batch['mask'] & batch['valid_window'][:, None]])
  return moments.result(f'the {records.split} split of {records.directory} has no audio frames')


def cached_statistics(records: records_lib.Records, part: str) -> tuple[float, float]:
  """(mean, std) of `<part>_features` of every frame of `records` in its feature cache (`records.side`)."""
  if records.side is None or part not in records.side.features:
    raise ValueError(f'no {part} features are joined to {records.directory}: set config.data.side_features_dir')
  side, moments = records.side, _Moments()
  for video in side.videos:
    for j in range(video.num_chunks):
      chunk = side.source[video.first_record + j]
      moments.add(np.asarray(chunk[f'{part}_features'], np.float64)[chunk['frame_mask']])
  return moments.result(f'the {records.split} split of {side.directory} has no frames')


class _Moments:
  """Running sum, sum of squares and count of every value added; `result` gives (mean, std with N - 1)."""

  def __init__(self):
    self.total = self.total_sq = self.count = 0.0

  def add(self, x: np.ndarray) -> None:
    self.total, self.total_sq, self.count = self.total + x.sum(), self.total_sq + (x * x).sum(), self.count + x.size

  def result(self, empty: str) -> tuple[float, float]:
    if self.count < 2:
      raise ValueError(f'{empty} to take statistics of')
    mean = self.total / self.count
    return float(mean), float(np.sqrt(max(self.total_sq - self.count * mean * mean, 0.0) / (self.count - 1)))


def statistics(records: records_lib.Records, config, name: str) -> tuple[float, float]:
  """(mean, std) of follower `name` ('mfcc' or 'vggish') over `records`."""
  return mfcc_statistics(records, config) if name == 'mfcc' else cached_statistics(records, name)


def prepare(config: ml_collections.ConfigDict, records_dir: str, workdir) -> ml_collections.ConfigDict:
  """`config` with the followers' inputs ready: the VGGish feature records (built under `cache_dir` on first use
  unless `data.side_features_dir` names them) and every empty `model.feature_norm` entry set to the statistics of
  the training partition, computed once per workdir (`<workdir>/feature_norm.json`). LFAN's `prepare` hook."""
  names = followers(config)
  if not names:
    return config
  config = config.copy_and_resolve_references()
  if 'vggish' in names and not config.data.side_features_dir:
    out = default_vggish_dir(config, records_dir)
    if jax.process_index() == 0:
      build_vggish(config, records_dir, out)
    prepare_lib.sync_processes('affjax VGGish features built')
    config.data.side_features_dir = str(feature_cache.dataset_dir(out))
  path = pathlib.Path(workdir) / NORM_FILE
  saved = json.loads(path.read_text()) if path.exists() else {}
  missing = [name for name in names if not tuple(config.model.feature_norm[name]) and name not in saved]
  if missing:
    train = records_lib.open_partition(records_dir, 'train', config)
    saved.update({name: statistics(train, config, name) for name in missing})
    logging.info('feature statistics of the training partition: %s', saved)
    if jax.process_index() == 0:
      path.write_text(json.dumps(saved, indent=1) + '\n')
  for name in names:
    if not tuple(config.model.feature_norm[name]):
      config.model.feature_norm[name] = tuple(float(v) for v in saved[name])
  return config


def saved_statistics(config: ml_collections.ConfigDict, workdir) -> ml_collections.ConfigDict:
  """`config` with every empty `model.feature_norm` entry set to the statistics the run at `workdir` computed from
  its training partition (`<workdir>/feature_norm.json`, written by `prepare`), never those of new inputs. Other
  models: unchanged."""
  empty = [name for name in followers(config) if not tuple(config.model.feature_norm[name])]
  if not empty:
    return config
  path = pathlib.Path(workdir).expanduser() / NORM_FILE
  saved = json.loads(path.read_text()) if path.exists() else {}
  missing = [name for name in empty if name not in saved]
  if missing:
    raise FileNotFoundError(
        f'{path} holds no statistics of the follower(s) {", ".join(missing)}: the run writes them when it starts '
        'training (affjax.main); for a run trained elsewhere, pass the values it trained with, e.g. '
        f'--config.model.feature_norm.{missing[0]}="(mean, std)" (tools/feature_stats.py prints them)')
  config = config.copy_and_resolve_references()
  for name in empty:
    config.model.feature_norm[name] = tuple(float(v) for v in saved[name])
  return config
