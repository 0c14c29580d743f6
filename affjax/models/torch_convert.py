"""PyTorch checkpoints -> Flax variables, and loading them into an initialised model.

A backbone module exposes `from_torch(sd: StateDictReader) -> {'params': ..., 'batch_stats': ...}`;
`tools/convert_torch.py` runs one over a PyTorch checkpoint and writes the variables as a .msgpack file.
A config names that file per model part (`config.model.pretrained.<part>`, the part being the
submodule's name, e.g. 'visual'); `load_pretrained` reads and checks it against the model's names and
shapes, and `merge_pretrained` puts it into the initial variables.

Layout rules (PyTorch -> Flax): convolution kernels `[O, I, *spatial]` -> `[*spatial, I, O]`, dense
kernels transposed, BatchNorm weight/bias -> scale/bias and running_mean/var -> mean/var (`batch_stats`).
"""
from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

StateDict = dict[str, np.ndarray]
Variables = dict[str, Any]


# The only globals a pickled dict of numpy arrays refers to (numpy 1 and 2 module paths, Python 2 and 3).
_NUMPY_PICKLE_GLOBALS = frozenset({
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'), ('numpy', 'ndarray'),
    ('numpy', 'dtype'), ('_codecs', 'encode'), ('collections', 'OrderedDict')})


class _NumpyUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays, dicts and plain values only (no arbitrary code runs)."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _NUMPY_PICKLE_GLOBALS:
      raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a pickle of numpy arrays')
    return super().find_class(module, name)


def read_numpy_pickle(path: str) -> StateDict:
  """The arrays of a pickled dict name -> numpy array (the Oxford VGGFace2 `*_weight.pkl` files, written
  by Python 2), floating point as float32."""
  with open(path, 'rb') as f:
    obj = _NumpyUnpickler(f, encoding='latin1').load()
  if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f'{path}: expected a pickled dict of name -> numpy array')
  return {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in obj.items()}


def read_torch_checkpoint(path: str) -> StateDict:
  """The tensors of a PyTorch checkpoint as float32 numpy arrays.

  Accepts a bare state dict or one wrapped as the upstream training code saves it: {'state_dict': ...}
  (End2You, face-alignment, TSAV, abaw3_rnn_attn's trainer), {'net': ...} (RJCA's fusion), {'model_state': ...}
  (abaw3_rnn_attn's hyperparameter search) or {'model': ...}, next to other entries
  (optimizer, epoch, scores); strips the 'module.' prefix DataParallel adds. A `.pkl` file is read as a
  pickled dict of numpy arrays (`read_numpy_pickle`).
  """
  if path.endswith('.pkl'):
    return read_numpy_pickle(path)
  import torch  # pylint: disable=g-import-not-at-top  (only the converter needs PyTorch)
  obj = torch.load(path, map_location='cpu', weights_only=True)
  for wrapper in ('state_dict', 'net', 'model', 'model_state'):
    if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
    what = f'a dict with {sorted(obj)[:8]}' if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(f'{path}: expected a PyTorch state dict (name -> tensor), got {what}; '
                     'save the model with torch.save(model.state_dict(), path)')
  return {k.removeprefix('module.'): v.detach().cpu().float().numpy() if v.is_floating_point()
          else v.detach().cpu().numpy() for k, v in obj.items()}


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch Conv{1,2,3}d weight `[O, I, *spatial]` -> Flax kernel `[*spatial, I, O]`."""
  return np.transpose(w, (*range(2, w.ndim), 1, 0))


class MissingTensor(KeyError):
  """A tensor a converter needs is not in the state dict (`key`: its name)."""

  def __init__(self, message: str, key: str):
    super().__init__(message)
    self.key = key

  def __str__(self) -> str:
    return self.args[0]


class StateDictReader:
  """Reads a state dict by name, remembering what was read so that leftovers can be reported."""

  def __init__(self, state_dict: StateDict, source: str = 'checkpoint'):
    self._sd = state_dict
    self.source = source
    self._used: set[str] = set()

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self._sd:
      near = sorted(k for k in self._sd if k.rsplit('.', 1)[0] == key.rsplit('.', 1)[0])
      raise MissingTensor(f'{self.source} has no tensor {key!r}' + (f' (same module: {near})' if near else '')
                          + '; is it a checkpoint of this network?', key)
    self._used.add(key)
    return np.asarray(self._sd[key])

  def __contains__(self, key: str) -> bool:
    return key in self._sd

  def conv(self, prefix: str, bias: bool = False) -> dict[str, np.ndarray]:
    out = {'kernel': conv_kernel(self[f'{prefix}.weight'])}
    if bias:
      out['bias'] = self[f'{prefix}.bias']
    return out

  def dense(self, prefix: str, bias: bool = True) -> dict[str, np.ndarray]:
    out = {'kernel': self[f'{prefix}.weight'].T}
    if bias:
      out['bias'] = self[f'{prefix}.bias']
    return out

  def batch_norm(self, prefix: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(params {scale, bias}, batch_stats {mean, var}); `num_batches_tracked` is read and dropped."""
    if f'{prefix}.num_batches_tracked' in self._sd:
      self._used.add(f'{prefix}.num_batches_tracked')
    return ({'scale': self[f'{prefix}.weight'], 'bias': self[f'{prefix}.bias']},
            {'mean': self[f'{prefix}.running_mean'], 'var': self[f'{prefix}.running_var']})

  def unused(self, ignore: Iterable[str] = ()) -> list[str]:
    """The names never read, other than those under the `ignore` prefixes (e.g. a classifier head)."""
    ignore = tuple(ignore)
    return sorted(k for k in self._sd if k not in self._used and not (ignore and k.startswith(ignore)))

  def check_all_used(self, ignore: Iterable[str] = ()) -> None:
    """Raises, naming them, if tensors other than the `ignore` prefixes were never read."""
    left = self.unused(ignore)
    if left:
      raise ValueError(f'{self.source}: {len(left)} tensors were not converted: {name_list(left)}; '
                       'the checkpoint does not match this network')


def name_list(keys: list[str], limit: int = 12) -> str:
  """The first `limit` names, comma-separated, and how many more there are (for error messages)."""
  return ', '.join(keys[:limit]) + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def save_variables(path: str, variables: Variables) -> None:
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))


def read_variables(path: str) -> Variables:
  with open(path, 'rb') as f:
    return flax.serialization.msgpack_restore(f.read())


def _leaves(tree) -> dict[str, tuple[int, ...]]:
  flat = flax.traverse_util.flatten_dict(tree, sep='/')
  return {k: tuple(np.shape(v)) for k, v in flat.items()}


def load_pretrained(parts: Mapping[str, str], abstract_variables: Variables) -> dict[str, Variables]:
  """Reads the converted file of every model part with a non-empty path in `parts` (the config's
  `model.pretrained`: part name -> path), checked against the model's (abstract) initial variables.

  Every name and shape must match exactly; a mismatch raises ValueError naming the file, the config
  field and the first differing entries.
  """
  loaded = {}
  for part, path in parts.items():
    if not path:
      continue
    field = f'config.model.pretrained.{part}'
    tree = read_variables(path)
    for collection, subtree in tree.items():
      if part not in abstract_variables.get(collection, {}):
        raise ValueError(f'{path} ({field}): the model has no {collection}/{part}; '
                         f'its parts are {sorted(abstract_variables.get("params", {}))}')
      want, got = _leaves(abstract_variables[collection][part]), _leaves(subtree)
      if want != got:
        missing, extra = sorted(set(want) - set(got))[:3], sorted(set(got) - set(want))[:3]
        shapes = [(k, got[k], want[k]) for k in sorted(set(want) & set(got)) if got[k] != want[k]][:3]
        raise ValueError(f'{path} ({field}) does not fit {collection}/{part}: missing {missing}, '
                         f'unexpected {extra}, shape (file, model) {shapes}; convert the checkpoint with '
                         'tools/convert_torch.py for the backbone this config builds')
    loaded[part] = tree
  return loaded


def merge_pretrained(variables: Variables, pretrained: Mapping[str, Variables]) -> Variables:
  """`variables` with each part of `pretrained` (from `load_pretrained`) put in, in the initial dtypes.

  Works on traced values, so it runs inside the jitted state creation.
  """
  out = {collection: dict(tree) for collection, tree in variables.items()}
  for part, tree in pretrained.items():
    for collection, subtree in tree.items():
      out[collection][part] = jax.tree.map(lambda v, init: jnp.asarray(v, init.dtype), subtree,
                                           variables[collection][part])
  return out
