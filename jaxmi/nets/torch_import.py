"""Reading published PyTorch checkpoints without importing torch and without running pickled code.

``read_checkpoint(path)`` returns the state dict as numpy arrays (C-contiguous copies, in the file's key
order) plus the checkpoint's other entries. The format is found from the file's bytes, not its name:

* **zip** (``torch.save`` since torch 1.6; the PyTorch serialization notes,
  https://pytorch.org/docs/stable/notes/serialization.html, and ``torch/serialization.py``): a zip archive
  whose entries all sit in one top folder of any name. ``<folder>/data.pkl`` is a pickle of the saved
  object in which every tensor is a call to ``torch._utils._rebuild_tensor_v2`` (storage, storage offset,
  size, stride, requires_grad, backward hooks) whose storage is a *persistent id*
  ``('storage', <storage class>, <key>, <device>, <element count>)``; the storage's raw bytes are the
  entry ``<folder>/data/<key>``. The typed storage class (``torch.FloatStorage``, ...) gives the dtype;
  dtypes without one (uint16, ...) use ``_rebuild_tensor_v3`` with an ``UntypedStorage`` (counted in bytes)
  and the dtype as a trailing ``torch.<dtype>`` argument. ``<folder>/byteorder`` holds ``little`` or
  ``big``, the saving machine's order; without it the data is little-endian.
* **legacy** (``_use_new_zipfile_serialization=False``, and every file written before torch 1.6, such as
  the 2020-era GMI/KEDMI ``.tar`` files): five pickles and raw data back to back in one stream -- the magic
  number 0x1950a86a20f9469cfc6c, the protocol version 1001, a dict of system info, the saved object (its
  persistent ids are ``('storage', <class>, <key>, <device>, <element count>, <view or None>)``), and the
  list of storage keys; then, for each key in that order, the storage's element count as a little-endian
  int64 followed by its bytes (always little-endian).
* **safetensors** (https://huggingface.co/docs/safetensors, "Format"): an unsigned little-endian 64-bit
  header length N, N bytes of JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets":
  [begin, end]}`` (byte offsets into the data that follows the header) and an optional ``__metadata__``
  dict of strings, then the row-major little-endian data. Nothing in it is code.

Pickles are read with an allow-list (``_ALLOWED``): the tensor and parameter rebuild functions, the storage
classes, dtypes, ``torch.Size`` and ``collections.OrderedDict``, each mapped to a stand-in defined here;
plain containers and scalars need no global. Any other global -- ``os.system``, ``builtins.eval``, an
``nn.Module`` class from ``torch.save(model)`` -- stops the read with one ``CheckpointError`` line before
anything is called, so a malicious checkpoint cannot run code. Not supported (refused with one line): the
pre-0.4 tar format, TorchScript archives, sparse and quantized tensors.

``unwrap`` finds the state dict inside the saved object (a bare one, ``{'state_dict': ...}``,
``{'model': ...}``, ``{'model_state_dict': ...}``, MIBench's ``{'state_dict', 'config', 'model_name'}``) and
strips DataParallel's ``module.`` prefix.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import io
import json
import math
import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import ml_dtypes
import numpy as np

from jaxmi.errors import CheckpointError, JaxmiError

# torch dtype name -> (numpy dtype, legacy typed-storage class or None when torch has none for it).
_DTYPES = {
  "float32": (np.dtype(np.float32), "FloatStorage"),
  "float64": (np.dtype(np.float64), "DoubleStorage"),
  "float16": (np.dtype(np.float16), "HalfStorage"),
  "bfloat16": (np.dtype(ml_dtypes.bfloat16), "BFloat16Storage"),
  "int64": (np.dtype(np.int64), "LongStorage"),
  "int32": (np.dtype(np.int32), "IntStorage"),
  "int16": (np.dtype(np.int16), "ShortStorage"),
  "int8": (np.dtype(np.int8), "CharStorage"),
  "uint8": (np.dtype(np.uint8), "ByteStorage"),
  "bool": (np.dtype(np.bool_), "BoolStorage"),
  "uint16": (np.dtype(np.uint16), None),
  "uint32": (np.dtype(np.uint32), None),
  "uint64": (np.dtype(np.uint64), None),
}
_SAFETENSORS_DTYPES = {
  "F32": "float32",
  "F64": "float64",
  "F16": "float16",
  "BF16": "bfloat16",
  "I64": "int64",
  "I32": "int32",
  "I16": "int16",
  "I8": "int8",
  "U8": "uint8",
  "BOOL": "bool",
  "U16": "uint16",
  "U32": "uint32",
  "U64": "uint64",
}
_MAGIC = 0x1950A86A20F9469CFC6C  # the legacy format's first pickle
_LEGACY_PROTOCOL = 1001
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")

Format = Literal["zip", "legacy", "safetensors"]


@dataclasses.dataclass(frozen=True, eq=False)
class TorchCheckpoint:
  """A checkpoint's state dict as numpy arrays (the file's key order) and its other top-level entries."""

  tensors: dict[str, np.ndarray]
  extras: dict[str, Any]
  format: Format


# Stand-ins the allow-listed globals resolve to. NamedTuples: immutable and without __dict__, so a
# pickle's BUILD opcode cannot rewrite them after a rebuild function validated their fields.
class _Dtype(NamedTuple):
  name: str  # a key of _DTYPES


class _StorageType(NamedTuple):
  dtype: str | None  # None: UntypedStorage, whose element count is in bytes


class _Storage(NamedTuple):
  key: str  # the root storage's key: its zip entry or its place in the legacy data
  dtype: str  # the storage's element type ("uint8" for an untyped storage)
  byte_offset: int  # into the root storage (legacy storage views; else 0)
  nbytes: int


class _Tensor(NamedTuple):
  storage: _Storage
  offset: int  # in elements of dtype
  size: tuple[int, ...]
  stride: tuple[int, ...]
  dtype: str


def _one_line(text: str) -> str:
  return repr(str(text))[1:-1]


def _int_tuple(value, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
    raise ValueError(f"{what} is {_one_line(repr(value))[:80]}, expected a tuple of non-negative ints")
  return tuple(value)


def _tensor(storage, offset, size, stride, dtype: str) -> _Tensor:
  if not isinstance(storage, _Storage):
    raise ValueError(f"a tensor's storage is a {type(storage).__name__}, not a storage reference")
  if type(offset) is not int or offset < 0:
    raise ValueError(f"a tensor's storage offset is {offset!r}")
  size, stride = _int_tuple(size, "a tensor's size"), _int_tuple(stride, "a tensor's stride")
  if len(size) != len(stride):
    raise ValueError(f"a tensor's size {size} and stride {stride} differ in length")
  return _Tensor(storage, offset, size, stride, dtype)


def _rebuild_tensor(storage, storage_offset, size, stride):
  """torch < 0.4's ``_rebuild_tensor``: the storage's dtype is the tensor's."""
  return _tensor(storage, storage_offset, size, stride, getattr(storage, "dtype", None))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
  """``_rebuild_tensor_v2``: a view (offset, size, stride in elements) of a typed storage. Hooks are dropped."""
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
  """``_rebuild_tensor_v3``: as v2, with the dtype given explicitly (the storage is then untyped bytes)."""
  if not isinstance(dtype, _Dtype):
    raise ValueError(f"a tensor's dtype is {type(dtype).__name__}, not a torch dtype")
  return _tensor(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
  """``nn.Parameter`` (with or without extra attribute state): the tensor it wraps."""
  if not isinstance(data, _Tensor):
    raise ValueError(f"a parameter wraps a {type(data).__name__}, not a tensor")
  return data


def _size(dims=()):
  """``torch.Size``: a tuple of ints."""
  return _int_tuple(tuple(dims), "a torch.Size")


_ALLOWED: dict[tuple[str, str], Any] = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  ("torch", "Size"): _size,
  ("torch", "UntypedStorage"): _StorageType(None),
  ("torch.storage", "UntypedStorage"): _StorageType(None),
  **{("torch", name): _Dtype(name) for name in _DTYPES},
  **{("torch", cls): _StorageType(name) for name, (_, cls) in _DTYPES.items() if cls},
}


def _refusal(source: str, module: str, name: str) -> str:
  qualified = _one_line(f"{module}.{name}")
  message = f"{source}: refuses to unpickle {qualified} (only tensors, storages and plain containers are loaded)"
  # Anything from torch or __main__, or a class from a user's package (not os, subprocess, ...): a pickled model.
  package = module.split(".")[0]
  if package in ("torch", "__main__") or (name[:1].isupper() and package not in sys.stdlib_module_names):
    message += "; a whole pickled model (torch.save(model)) cannot be read: save model.state_dict() instead"
  return message


class _Unpickler(pickle.Unpickler):
  """Resolves only the allow-listed globals; ``storage`` turns a persistent id into a ``_Storage``."""

  def __init__(self, file, source: str, storage: Callable[[tuple], _Storage] | None = None):
    super().__init__(file)
    self._source = source
    self._storage = storage

  def find_class(self, module, name):
    # Python 2 names (``__builtin__``, ...) as Python 3 knows them, the renaming pickle itself applies.
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    found = _ALLOWED.get((module, name))
    if found is None:
      raise CheckpointError(_refusal(self._source, str(module), str(name)))
    return found

  def persistent_load(self, pid):
    if self._storage is None:
      raise ValueError("a persistent id outside the saved object")
    return self._storage(pid)


def _text(value) -> str:
  if isinstance(value, bytes):  # Python 2 era files may hold ASCII bytes
    return value.decode("ascii")
  if not isinstance(value, str):
    raise ValueError(f"expected a string in a storage id, found {type(value).__name__}")
  return value


class _Storages:
  """The storages a pickle names, by key; checks that one key always means the same dtype and size."""

  def __init__(self, legacy: bool):
    self.legacy = legacy
    self.roots: dict[str, tuple[str, int]] = {}  # key -> (dtype, nbytes)

  def __call__(self, pid) -> _Storage:
    if not isinstance(pid, tuple) or not pid or _text(pid[0]) != "storage":
      raise ValueError(f"unknown persistent id {_one_line(repr(pid))[:80]}")
    fields = pid[1:]
    if len(fields) != (5 if self.legacy else 4):
      raise ValueError(f"a storage id with {len(fields)} fields")
    storage_type, key, _, numel = fields[:4]
    view = fields[4] if self.legacy else None
    if not isinstance(storage_type, _StorageType):
      raise ValueError("a storage id without a storage class")
    if type(numel) is not int or numel < 0:
      raise ValueError(f"a storage of {numel!r} elements")
    dtype = storage_type.dtype or "uint8"
    key = _text(key)
    nbytes = numel * _DTYPES[dtype][0].itemsize
    if self.roots.setdefault(key, (dtype, nbytes)) != (dtype, nbytes):
      raise ValueError(f"storage {key} is named with two dtypes or sizes")
    if view is None:
      return _Storage(key, dtype, 0, nbytes)
    # Pre-1.0 storage views: (view key, offset, size) in elements of the root storage.
    _, offset, view_size = view
    if type(offset) is not int or type(view_size) is not int or offset < 0 or view_size < 0:
      raise ValueError(f"a storage view {_one_line(repr(view))[:80]}")
    itemsize = _DTYPES[dtype][0].itemsize
    return _Storage(key, dtype, offset * itemsize, view_size * itemsize)


def _array(tensor: _Tensor, data, little_endian: bool) -> np.ndarray:
  """The tensor's elements (offset, size, stride into ``data``, the root storage's bytes) as a C-contiguous copy."""
  if tensor.dtype not in _DTYPES:
    raise ValueError(f"unsupported dtype {tensor.dtype!r}")
  dtype = _DTYPES[tensor.dtype][0]
  storage = tensor.storage
  if storage.byte_offset + storage.nbytes > len(data):
    raise ValueError(f"storage {storage.key} holds {len(data)} bytes, fewer than the {storage.nbytes} it declares")
  if math.prod(tensor.size) == 0:
    return np.zeros(tensor.size, dtype)
  itemsize = dtype.itemsize
  count = storage.nbytes // itemsize
  last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
  if last >= count:
    raise ValueError(f"a tensor of size {tensor.size} reaches element {last} of storage {storage.key} of {count}")
  # Read as unsigned ints of the element's width so that any dtype (bfloat16 too) swaps bytes the same way.
  raw = np.frombuffer(data, np.dtype(f"{'<' if little_endian else '>'}u{itemsize}"), count, storage.byte_offset)
  strides = tuple(s * itemsize for s in tensor.stride)
  view = np.lib.stride_tricks.as_strided(raw[tensor.offset :], tensor.size, strides, writeable=False)
  out = view.astype(np.dtype(f"=u{itemsize}"), order="C")
  return out != 0 if dtype == np.bool_ else out.view(dtype)


def _materialize(obj, data_of: Callable[[str], Any], little_endian: bool):
  """Replaces every tensor stand-in by its numpy array; OrderedDicts become dicts (same order)."""
  done: dict[int, Any] = {}

  def walk(x):
    if isinstance(x, _Tensor):
      return _array(x, data_of(x.storage.key), little_endian)
    if isinstance(x, (_Dtype, _StorageType)):
      return f"torch.{x.name}" if isinstance(x, _Dtype) else "torch.storage"
    if isinstance(x, _Storage):
      raise ValueError("a bare storage outside a tensor")
    if id(x) in done:
      return done[id(x)]
    if isinstance(x, dict):
      out = done[id(x)] = {}
      for k, v in x.items():
        out[walk(k)] = walk(v)
      return out
    if isinstance(x, list):
      out = done[id(x)] = []
      out.extend(walk(v) for v in x)
      return out
    if isinstance(x, tuple):
      out = done[id(x)] = tuple(walk(v) for v in x)
      return out
    if isinstance(x, (set, frozenset)) and any(isinstance(v, (_Tensor, _Storage)) for v in x):
      raise ValueError("a tensor inside a set")
    return x

  return walk(obj)


def _unpickle_zip(source: str, path: Path):
  with zipfile.ZipFile(path) as archive:
    names = set(archive.namelist())
    pickles = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    if len(pickles) != 1:
      kind = "a TorchScript archive" if any(n.endswith("constants.pkl") for n in names) else "a zip archive"
      raise CheckpointError(f"{source}: {kind} without one <folder>/data.pkl, not a torch.save checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = archive.read(prefix + "byteorder") if prefix + "byteorder" in names else b"little"
    if byteorder not in (b"little", b"big"):
      raise CheckpointError(f"{source}: {prefix}byteorder is {_one_line(byteorder[:20])}, expected little or big")
    storages = _Storages(legacy=False)
    obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), source, storages).load()
    cache: dict[str, bytes] = {}

    def data_of(key: str):
      if key not in cache:
        name = f"{prefix}data/{key}"
        if name not in names:
          raise CheckpointError(f"{source}: the entry {_one_line(name)} of a tensor's storage is missing")
        cache[key] = archive.read(name)
        if len(cache[key]) != storages.roots[key][1]:
          raise CheckpointError(
            f"{source}: {_one_line(name)} holds {len(cache[key])} bytes, its storage declares {storages.roots[key][1]}"
          )
      return cache[key]

    return _materialize(obj, data_of, byteorder == b"little")


def _unpickle_legacy(source: str, f):
  if _Unpickler(f, source).load() != _MAGIC:
    raise CheckpointError(f"{source}: a pickle without PyTorch's magic number, not a torch.save checkpoint")
  version = _Unpickler(f, source).load()
  if version != _LEGACY_PROTOCOL:
    raise CheckpointError(f"{source}: legacy format protocol {_one_line(repr(version))[:40]}, expected 1001")
  _Unpickler(f, source).load()  # sys info: the storages are little-endian whatever it says
  storages = _Storages(legacy=True)
  obj = _Unpickler(f, source, storages).load()
  keys = _Unpickler(f, source).load()
  if not isinstance(keys, list) or set(map(type, keys)) - {str, bytes}:
    raise ValueError("the storage key list is not a list of strings")
  data: dict[str, bytes] = {}
  for key in map(_text, keys):
    if key not in storages.roots or key in data:
      raise ValueError(f"storage key {_one_line(key)} is unknown or repeated")
    header = f.read(8)
    if len(header) != 8:
      raise CheckpointError(f"{source}: truncated: the data of storage {_one_line(key)} is missing")
    dtype, nbytes = storages.roots[key]
    (numel,) = struct.unpack("<q", header)
    if numel * _DTYPES[dtype][0].itemsize != nbytes:
      raise ValueError(f"storage {key} holds {numel} elements, the pickle says {nbytes} bytes")
    data[key] = f.read(nbytes)
    if len(data[key]) != nbytes:
      raise CheckpointError(f"{source}: truncated: storage {_one_line(key)} has {len(data[key])} of {nbytes} bytes")
  missing = set(storages.roots) - set(data)
  if missing:
    raise CheckpointError(f"{source}: truncated: no data for storage {_one_line(sorted(missing)[0])}")
  return _materialize(obj, data.__getitem__, True)


def _read_safetensors(source: str, f, size: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  (header_size,) = struct.unpack("<Q", f.read(8))
  header = json.loads(f.read(header_size).decode("utf-8"))
  if not isinstance(header, dict):
    raise ValueError("the JSON header is not an object")
  base = 8 + header_size
  tensors, extras = {}, {}
  for name, info in header.items():
    if name == "__metadata__":
      extras["__metadata__"] = info
      continue
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
    if dtype is None:
      raise CheckpointError(f"{source}: tensor {_one_line(name)} has an unsupported dtype or a malformed entry")
    shape = _int_tuple(info.get("shape"), f"the shape of {name}")
    begin, end = _int_tuple(info.get("data_offsets"), f"the data offsets of {name}")
    itemsize = _DTYPES[dtype][0].itemsize
    if end - begin != math.prod(shape) * itemsize or base + end > size:
      raise ValueError(f"tensor {name}: data offsets [{begin}, {end}] do not fit shape {shape} in the file")
    f.seek(base + begin)
    data = f.read(end - begin)
    strides = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
    tensors[name] = _array(_Tensor(_Storage(name, dtype, 0, len(data)), 0, shape, strides, dtype), data, True)
  return tensors, extras


def _detect(head: bytes, size: int) -> str | None:
  if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
    return "zip"
  if head[:1] == b"\x80":  # a pickle: the legacy format if its first object is the magic number
    return "legacy"
  if len(head) >= 9 and head[8:9] == b"{":
    header_size = struct.unpack("<Q", head[:8])[0]
    if header_size <= min(size - 8, _MAX_SAFETENSORS_HEADER):
      return "safetensors"
  return None


def read_object(path) -> tuple[Any, Format]:
  """The object a ``torch.save`` file holds (tensors as numpy arrays), or a safetensors file's
  ``{"state_dict": tensors, **metadata}``; one-line ``CheckpointError`` for anything else."""
  source = str(path)
  path = Path(path)
  if not path.is_file():
    raise CheckpointError(f"{source}: no such checkpoint file")
  kind = None
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      head = f.read(512)
      kind = _detect(head, size)
      if kind is None:
        tar = head[257:262] == b"ustar"
        raise CheckpointError(
          f"{source}: a tar archive (torch.save's pre-0.4 format) is not supported"
          if tar
          else f"{source}: not a PyTorch checkpoint (neither torch.save's zip or legacy format nor safetensors)"
        )
      f.seek(0)
      if kind == "zip":
        return _unpickle_zip(source, path), "zip"
      if kind == "legacy":
        return _unpickle_legacy(source, f), "legacy"
      tensors, extras = _read_safetensors(source, f, size)
      return {"state_dict": tensors, **extras}, "safetensors"
  except JaxmiError:
    raise
  except Exception as e:  # zipfile, pickle, struct, json, numpy: a damaged file, reported in one line
    detail = _one_line(f"{type(e).__name__}: {e}")[:200]
    raise CheckpointError(f"{source}: corrupt or truncated {kind or 'PyTorch'} checkpoint ({detail})") from e


def _is_state_dict(x) -> bool:
  return isinstance(x, dict) and bool(x) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in x.items())


def _why_not(obj) -> str:
  """Why the first of ``_STATE_DICT_KEYS`` that ``obj`` has is no state dict ("" when it has none)."""
  key = next((k for k in _STATE_DICT_KEYS if isinstance(obj, dict) and k in obj), None)
  if key is None:
    return ""
  value = obj[key]
  if not isinstance(value, dict) or not value:
    return f"; {key!r} holds {'an empty dict' if isinstance(value, dict) else 'a ' + type(value).__name__}"
  bad = next(k for k, v in value.items() if not (isinstance(k, str) and isinstance(v, np.ndarray)))
  return f"; {key!r} holds {_one_line(repr(bad))[:60]}: a {type(value[bad]).__name__}, not a tensor"


def unwrap(obj, source: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(state dict, other top-level entries) of a loaded checkpoint; DataParallel's ``module.`` prefix stripped.

  Accepts a bare state dict (a dict of tensors) or one under ``state_dict``, ``model_state_dict`` or
  ``model`` (MIBench's ``config`` and ``model_name``, an epoch, ... go to the extras).
  """
  if _is_state_dict(obj):
    state_dict, extras = obj, {}
  else:
    found = [k for k in _STATE_DICT_KEYS if isinstance(obj, dict) and _is_state_dict(obj.get(k))]
    if len(found) != 1:
      if not isinstance(obj, dict):
        what = f"a {type(obj).__name__}"
      else:
        keys = [_one_line(repr(k)) for k in list(obj)[:12]]
        what = f"top-level keys {', '.join(keys)}{', ...' if len(obj) > 12 else ''}" if obj else "an empty dict"
      several = f"several state dicts ({', '.join(found)})" if found else f"no state dict ({what}{_why_not(obj)})"
      raise CheckpointError(
        f"{source}: {several}; expected a dict of tensors, or one under 'state_dict', 'model_state_dict' or 'model'"
      )
    state_dict = obj[found[0]]
    extras = {k: v for k, v in obj.items() if k != found[0]}
  if all(k.startswith("module.") for k in state_dict):
    state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
  return dict(state_dict), extras


def read_checkpoint(path) -> TorchCheckpoint:
  """The state dict of a PyTorch checkpoint (zip, legacy or safetensors) as numpy arrays, without torch."""
  obj, kind = read_object(path)
  tensors, extras = unwrap(obj, str(path))
  return TorchCheckpoint(tensors=tensors, extras=extras, format=kind)


# -- mapping a state dict onto a jaxmi network ------------------------------------------------------------------


class StrictStateDict:
  """Consumes a state dict key by key while a network's variables are filled; anything amiss is one line.

  ``take(key, shape)`` returns the array of ``key`` (torch layout) and checks its shape; ``finish()``
  refuses keys nothing took. Each architecture's ``from_torch`` uses it, so a missing, unexpected or
  mis-shaped key always reads the same way: the file, the key, the expected and the found shape.
  """

  def __init__(self, tensors: dict[str, np.ndarray], source: str = "checkpoint"):
    self.tensors = dict(tensors)
    self.source = source
    self.taken: set[str] = set()

  def take(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if key not in self.tensors:
      near = [k for k in self.tensors if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
      hint = f" (keys under that module: {', '.join(near[:4])})" if near else ""
      raise CheckpointError(f"{self.source}: missing key '{key}'{hint}")
    value = self.tensors[key]
    if shape is not None and tuple(value.shape) != tuple(shape):
      raise CheckpointError(
        f"{self.source}: key '{key}' has shape {tuple(value.shape)}; this architecture expects {tuple(shape)}"
      )
    self.taken.add(key)
    return value

  def skip(self, key: str) -> None:
    """Consumes a key the network has no counterpart for by design (BatchNorm's ``num_batches_tracked``)."""
    if key in self.tensors:
      self.taken.add(key)

  def finish(self) -> None:
    left = [k for k in self.tensors if k not in self.taken]
    if left:
      more = f" (+{len(left) - 5} more)" if len(left) > 5 else ""
      raise CheckpointError(
        f"{self.source}: unexpected key(s) {', '.join(left[:5])}{more}: not part of this architecture"
      )


def conv_kernel(sd: StrictStateDict, key: str, shape_hwio: tuple[int, int, int, int]) -> np.ndarray:
  """A torch Conv2d weight [O, I, kh, kw] as a Flax kernel [kh, kw, I, O]."""
  kh, kw, i, o = shape_hwio
  return np.ascontiguousarray(sd.take(key, (o, i, kh, kw)).transpose(2, 3, 1, 0))


def dense_kernel(sd: StrictStateDict, key: str, shape_io: tuple[int, int]) -> np.ndarray:
  """A torch Linear weight [O, I] as a Flax kernel [I, O]."""
  i, o = shape_io
  return np.ascontiguousarray(sd.take(key, (o, i)).T)


def batch_norm(sd: StrictStateDict, prefix: str, n: int) -> tuple[dict, dict]:
  """(params, batch_stats) of a Flax BatchNorm from torch's ``<prefix>.{weight,bias,running_mean,running_var}``."""
  params = {"scale": sd.take(f"{prefix}.weight", (n,)), "bias": sd.take(f"{prefix}.bias", (n,))}
  stats = {"mean": sd.take(f"{prefix}.running_mean", (n,)), "var": sd.take(f"{prefix}.running_var", (n,))}
  sd.skip(f"{prefix}.num_batches_tracked")
  return params, stats


def chw_to_hwc_rows(matrix: np.ndarray, c: int, h: int, w: int) -> np.ndarray:
  """Reorders the input axis (axis 0) of a Flax kernel from torch's flatten order (C, H, W) to jaxmi's (H, W, C).

  A layer after ``x.flatten(1)`` of an NCHW map sees the features in (C, H, W) order; jaxmi flattens NHWC.
  """
  rest = matrix.shape[1:]
  return np.ascontiguousarray(
    matrix.reshape(c, h, w, *rest).transpose(1, 2, 0, *range(3, 3 + len(rest))).reshape(c * h * w, *rest)
  )


def chw_to_hwc(vector: np.ndarray, c: int, h: int, w: int) -> np.ndarray:
  """A per-feature vector (BatchNorm1d over a flattened NCHW map) in jaxmi's (H, W, C) order."""
  return np.ascontiguousarray(vector.reshape(c, h, w).transpose(1, 2, 0).reshape(-1))
