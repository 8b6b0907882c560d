"""jaxmi.nets.torch_import reads what torch.save and safetensors write, bit for bit, and runs no pickled code.

torch and safetensors are test-only dependencies (requirements-test.txt): they write the files and give the
expected values; jaxmi itself never imports them (the last test checks that in a process without torch).
"""

import collections
import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch

from jaxmi.errors import CheckpointError
from jaxmi.nets.torch_import import read_checkpoint, read_object, unwrap

REPO = Path(__file__).resolve().parents[1]


class Net(torch.nn.Module):
  """Conv, BatchNorm and Linear: the layers (and the 0-d num_batches_tracked) every published net has."""

  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv2d(3, 4, 3)
    self.bn = torch.nn.BatchNorm2d(4)
    self.fc = torch.nn.Linear(16, 5)


def data_parallel_state_dict():
  torch.manual_seed(0)
  net = Net()
  with torch.no_grad():  # non-default running stats, so a mix-up of BN entries shows
    net.bn.running_mean.normal_()
    net.bn.running_var.uniform_(0.5, 2.0)
    net.bn.num_batches_tracked.fill_(7)
  return torch.nn.DataParallel(net).state_dict()


def numpy_of(t: torch.Tensor) -> np.ndarray:
  t = t.detach()
  if t.dtype == torch.bfloat16:  # numpy has no bfloat16: the same bits through int16
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def assert_same_tensors(got: dict, expected: dict, ordered: bool = True):
  assert (list(got) if ordered else sorted(got)) == (list(expected) if ordered else sorted(expected))
  for key, t in expected.items():
    want = numpy_of(t)
    assert got[key].dtype == want.dtype, key
    assert got[key].shape == want.shape, key
    assert got[key].flags.c_contiguous, key
    assert got[key].tobytes() == np.ascontiguousarray(want).tobytes(), key  # bit-exact


def save(obj, path: Path, fmt: str) -> Path:
  torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
  return path


def strip_module(sd):
  return {k.removeprefix("module."): v for k, v in sd.items()}


def assert_one_line_error(excinfo, path, *fragments):
  message = str(excinfo.value)
  assert "\n" not in message
  assert message.startswith(str(path)), message
  for fragment in fragments:
    assert fragment in message, message


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("wrapping", ["state_dict", "mibench", "model", "model_state_dict", "bare"])
def test_state_dicts_round_trip_bit_exact(tmp_path, fmt, wrapping):
  sd = data_parallel_state_dict()
  extras = {
    "state_dict": {},
    "mibench": {"config": {"num_classes": 5, "resolution": 64}, "model_name": "ir152_64"},
    "model": {"epoch": 3},
    "model_state_dict": {"optimizer": {"lr": 0.01}},
    "bare": {},
  }[wrapping]
  key = {"mibench": "state_dict", "bare": None}.get(wrapping, wrapping)
  obj = sd if key is None else {key: sd, **extras}
  path = save(obj, tmp_path / "net.pth", fmt)
  checkpoint = read_checkpoint(path)
  assert checkpoint.format == fmt
  assert list(sd)[0].startswith("module.")
  assert_same_tensors(checkpoint.tensors, strip_module(sd))
  assert checkpoint.extras == extras
  assert checkpoint.tensors["bn.num_batches_tracked"].shape == ()


def test_safetensors_round_trip_bit_exact(tmp_path):
  sd = data_parallel_state_dict()
  path = tmp_path / "net.safetensors"
  safetensors.torch.save_file(sd, path, metadata={"model_name": "ir152_64"})
  checkpoint = read_checkpoint(path)
  assert checkpoint.format == "safetensors"
  assert_same_tensors(checkpoint.tensors, strip_module(sd), ordered=False)  # the file sorts by dtype and name
  assert checkpoint.extras == {"__metadata__": {"model_name": "ir152_64"}}


def odd_tensors():
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
  shared = torch.arange(10, dtype=torch.int64)
  return {
    "f32": torch.randn(2, 3, generator=torch.Generator().manual_seed(1)),
    "f16": torch.tensor([1.5, -2.25, 65504.0], dtype=torch.float16),
    "bf16": torch.tensor([1.0, -3.140625, 1e30], dtype=torch.bfloat16),
    "f64": torch.tensor([1 / 3], dtype=torch.float64),
    "i64": torch.tensor([-(2**62), 5]),
    "i32": torch.tensor([-7, 2**31 - 1], dtype=torch.int32),
    "i8": torch.tensor([-128, 127], dtype=torch.int8),
    "u8": torch.tensor([0, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.5),
    "transposed": base.t(),  # strides (1, 6)
    "strided": base[1:, ::2],  # offset 6, strides (6, 2)
    "view_a": shared[2:5],  # two views of one storage, at offsets 2 and 6
    "view_b": shared[6:].view(2, 2),
    "empty": torch.zeros(0, 3),
  }


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_dtypes_views_and_shared_storages(tmp_path, fmt):
  tensors = odd_tensors()
  path = save(tensors, tmp_path / "odd.pth", fmt)
  if fmt == "zip":  # views really share storages in the file: transposed/strided one, view_a/view_b another
    storages = [n for n in zipfile.ZipFile(path).namelist() if "/data/" in n]
    assert len(storages) == len(tensors) - 2
  got, kind = read_object(path)
  assert kind == fmt
  assert_same_tensors(got, tensors)
  assert not tensors["transposed"].is_contiguous()


def test_zip_with_pickle_protocol_4(tmp_path):
  tensors = odd_tensors()
  path = tmp_path / "p4.pth"
  torch.save(tensors, path, pickle_protocol=4)
  opcodes = {op.name for op, _, _ in pickletools.genops(zipfile.ZipFile(path).read("p4/data.pkl"))}
  assert {"FRAME", "STACK_GLOBAL"} <= opcodes and "GLOBAL" not in opcodes
  assert_same_tensors(read_checkpoint(path).tensors, tensors)


def test_uint16_uses_rebuild_tensor_v3(tmp_path):
  # dtypes without a legacy storage class are written as an untyped storage plus an explicit dtype.
  tensors = {"u16": torch.tensor([1, 2, 65535], dtype=torch.uint16), "f32": torch.ones(2)}
  path = save(tensors, tmp_path / "u16.pth", "zip")
  assert b"_rebuild_tensor_v3" in zipfile.ZipFile(path).read("u16/data.pkl")
  assert_same_tensors(read_checkpoint(path).tensors, tensors)


def rewrite_zip(src: Path, dst: Path, replace):
  """Copies the zip archive ``src`` to ``dst``, with ``replace(name, data)`` giving each entry's new bytes."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    for name in zin.namelist():
      zout.writestr(name, replace(name, zin.read(name)))
  return dst


def test_big_endian_zip_checkpoints_are_byte_swapped(tmp_path):
  tensors = {"f32": torch.tensor([1.5, -2.0]), "bf16": torch.tensor([3.0, -0.5], dtype=torch.bfloat16)}
  tensors["i64"] = torch.tensor([1, -(2**40)])
  little = save(tensors, tmp_path / "little.pth", "zip")
  itemsizes = {"0": 4, "1": 2, "2": 8}  # storages are keyed in order of first appearance

  def to_big(name, data):
    if name.endswith("/byteorder"):
      return b"big"
    key = name.rsplit("/data/", 1)[-1] if "/data/" in name else None
    if key in itemsizes:
      return np.frombuffer(data, f"<u{itemsizes[key]}").astype(f">u{itemsizes[key]}").tobytes()
    return data

  big = rewrite_zip(little, tmp_path / "big.pth", to_big)
  loaded = torch.load(big)  # torch reads the rewritten file as the original: the rewrite is right
  assert_same_tensors({k: numpy_of(v) for k, v in loaded.items()}, tensors)
  assert_same_tensors(read_checkpoint(big).tensors, tensors)


class Payload:
  """Unpickling this calls ``fn(arg)``: what a malicious checkpoint does."""

  def __init__(self, fn, arg):
    self.fn, self.arg = fn, arg

  def __reduce__(self):
    return self.fn, (self.arg,)


def payloads(marker: Path):
  return {
    "os.system": Payload(os.system, f"touch {marker}"),
    "builtins.eval": Payload(eval, f"__import__('os').system('touch {marker}')"),
  }


class StorageId:
  """Pickled as a persistent id, the way torch names a storage."""

  def __init__(self, *pid):
    self.pid = ("storage", *pid)


class IdPickler(pickle.Pickler):
  def persistent_id(self, obj):
    return obj.pid if isinstance(obj, StorageId) else None


class Rebuilt:
  """Pickled as torch pickles a tensor: a call of ``torch._utils._rebuild_tensor_v2``."""

  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, size, stride, False, collections.OrderedDict())

  def __reduce__(self):
    return torch._utils._rebuild_tensor_v2, self.args


def legacy_stream(obj, keys, storages=()) -> bytes:
  """A legacy-format file written by hand: header pickles, ``obj``, the key list ``keys``, the float32 data."""
  out = io.BytesIO()
  sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
  for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
    pickle.dump(header, out, protocol=2)
  IdPickler(out, protocol=2).dump(obj)
  pickle.dump(keys, out, protocol=2)
  for data in storages:
    out.write(struct.pack("<q", data.size) + data.astype("<f4").tobytes())
  return out.getvalue()


def test_legacy_storage_views_of_pre_1_0_files(tmp_path):
  # torch < 1.0 could save a view of a storage: (view key, offset, size) in the persistent id.
  root = np.arange(10, dtype=np.float32) / 3
  view = StorageId(torch.FloatStorage, "root", "cpu", 10, ("view", 2, 5))  # root[2:7]
  whole = StorageId(torch.FloatStorage, "root", "cpu", 10, None)
  obj = {"in_view": Rebuilt(view, 1, (3,), (1,)), "whole": Rebuilt(whole, 0, (2, 5), (5, 1))}
  path = tmp_path / "views.pth"
  path.write_bytes(legacy_stream(obj, ["root"], [root]))
  expected = torch.load(path)  # torch's reading of the hand-made file
  assert expected["in_view"].tolist() == root[3:6].tolist()
  assert_same_tensors(read_checkpoint(path).tensors, expected)


def test_a_tensor_past_its_storage_is_a_one_line_error(tmp_path):
  storage = StorageId(torch.FloatStorage, "root", "cpu", 4, None)
  path = tmp_path / "bad.pth"
  path.write_bytes(legacy_stream({"w": Rebuilt(storage, 2, (2, 2), (2, 1))}, ["root"], [np.ones(4)]))
  with pytest.raises(CheckpointError) as excinfo:
    read_checkpoint(path)
  assert_one_line_error(excinfo, path, "reaches element 5 of storage root of 4")


def test_the_payloads_do_run_under_plain_pickle(tmp_path):
  # Without this, the refusals below could pass with payloads that never worked.
  for name, payload in payloads(tmp_path / "marker").items():
    pickle.loads(pickle.dumps(payload, protocol=2))
    assert (tmp_path / "marker").exists(), name
    (tmp_path / "marker").unlink()


@pytest.mark.parametrize("name", ["os.system", "builtins.eval"])
@pytest.mark.parametrize("where", ["zip", "legacy", "legacy-first", "legacy-keys"])
def test_malicious_pickles_are_refused_and_never_run(tmp_path, name, where):
  marker = tmp_path / "marker"
  payload = payloads(marker)[name]
  path = tmp_path / "evil.pth"
  if where == "zip":
    good = save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "good.pth", "zip")
    evil = pickle.dumps({"state_dict": {"w": payload}}, protocol=2)
    rewrite_zip(good, path, lambda n, data: evil if n.endswith("/data.pkl") else data)
  elif where == "legacy":
    path.write_bytes(legacy_stream({"state_dict": {"w": payload}}, []))
  elif where == "legacy-first":  # in place of the magic number
    path.write_bytes(pickle.dumps(payload, protocol=2) + legacy_stream({"w": 1}, []))
  else:  # in the storage key list that follows the object
    path.write_bytes(legacy_stream({"w": 1}, [payload]))
  with pytest.raises(CheckpointError) as excinfo:
    read_checkpoint(path)
  refused = "posix.system" if name == "os.system" else name
  assert_one_line_error(excinfo, path, f"refuses to unpickle {refused} (only tensors")
  assert "state_dict()" not in str(excinfo.value)  # no model hint for a system call
  assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("model", ["custom", "sequential"])
def test_whole_pickled_models_are_refused_with_a_hint(tmp_path, fmt, model):
  module = Net() if model == "custom" else torch.nn.Sequential(torch.nn.Linear(2, 2))
  path = save(module, tmp_path / "model.pth", fmt)
  with pytest.raises(CheckpointError) as excinfo:
    read_checkpoint(path)
  cls = "Net" if model == "custom" else "torch.nn.modules.container.Sequential"
  assert_one_line_error(excinfo, path, "refuses to unpickle", cls, "save model.state_dict() instead")


def damaged_files(tmp_path):
  sd = {"w": torch.arange(1000, dtype=torch.float32)}
  zip_bytes = save(sd, tmp_path / "z.pth", "zip").read_bytes()
  legacy_bytes = save(sd, tmp_path / "l.pth", "legacy").read_bytes()
  safetensors.torch.save_file(sd, tmp_path / "s.safetensors")
  st_bytes = (tmp_path / "s.safetensors").read_bytes()
  return {
    "truncated zip": zip_bytes[: len(zip_bytes) // 2],
    "zip without its end": zip_bytes[:-30],
    "legacy cut in the data": legacy_bytes[:-100],
    "legacy cut in the pickle": legacy_bytes[:200],
    "safetensors cut in the data": st_bytes[:-100],
    "safetensors cut in the header": st_bytes[:30],
    "garbage": bytes(range(256)) * 4,
    "empty": b"",
    "plain pickle": pickle.dumps({"w": [1.0, 2.0]}, protocol=2),
    "tar": b"x" * 257 + b"ustar" + b"\0" * 250,
  }


def test_damaged_and_unknown_files_are_one_line_errors(tmp_path):
  for what, data in damaged_files(tmp_path).items():
    path = tmp_path / "bad.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as excinfo:
      read_checkpoint(path)
    assert "\n" not in str(excinfo.value), what
    assert str(excinfo.value).startswith(f"{path}: "), what
  with pytest.raises(CheckpointError, match="no such checkpoint file"):
    read_checkpoint(tmp_path / "missing.pth")


def test_a_zip_storage_entry_missing_is_a_one_line_error(tmp_path):
  good = save({"w": torch.ones(3)}, tmp_path / "good.pth", "zip")
  path = tmp_path / "bad.pth"
  with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
    for name in zin.namelist():
      if not name.endswith("/data/0"):
        zout.writestr(name, zin.read(name))
  with pytest.raises(CheckpointError) as excinfo:
    read_checkpoint(path)
  assert_one_line_error(excinfo, path, "good/data/0", "missing")


def test_unwrap_finds_the_state_dict_or_names_the_keys():
  w = np.ones(2, np.float32)
  assert unwrap({"module.a": w, "module.b": w})[0].keys() == {"a", "b"}
  assert unwrap({"module.a": w, "b": w})[0].keys() == {"module.a", "b"}  # strips only when every key has it
  assert unwrap({"model": {"a": w}, "epoch": 9}) == ({"a": w}, {"epoch": 9})
  with pytest.raises(CheckpointError) as excinfo:
    unwrap({"optimizer": {"lr": 0.1}, "epoch": 3}, "x.pth")
  assert_one_line_error(excinfo, "x.pth", "'optimizer', 'epoch'", "no state dict")
  with pytest.raises(CheckpointError, match=r"several state dicts \(state_dict, model\)"):
    unwrap({"state_dict": {"a": w}, "model": {"a": w}}, "x.pth")
  with pytest.raises(CheckpointError, match="x.pth: no state dict"):
    unwrap([w], "x.pth")
  with pytest.raises(CheckpointError) as excinfo:  # torch's extra state: not a tensor
    unwrap({"state_dict": {"a": w, "a._extra_state": {"k": 1}}, "epoch": 1}, "x.pth")
  assert_one_line_error(excinfo, "x.pth", "'state_dict', 'epoch'", "'state_dict' holds 'a._extra_state': a dict, not a")


def test_jaxmi_reads_checkpoints_without_torch(tmp_path):
  sd = data_parallel_state_dict()
  zip_path = save({"state_dict": sd}, tmp_path / "z.pth", "zip")
  legacy_path = save({"state_dict": sd}, tmp_path / "l.tar", "legacy")
  script = (
    "import sys\n"
    "sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
    "sys.modules['safetensors'] = None\n"
    "from jaxmi.nets.torch_import import read_checkpoint\n"
    "for path in sys.argv[1:]:\n"
    "  print(path, read_checkpoint(path).format, len(read_checkpoint(path).tensors))\n"
    "assert sys.modules['torch'] is None\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", script, str(zip_path), str(legacy_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.split("\n")[:2] == [f"{zip_path} zip {len(sd)}", f"{legacy_path} legacy {len(sd)}"]
