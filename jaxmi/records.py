"""Results on disk: JSON-lines metrics and JSON summaries (pictures: ``jaxmi.plots``), and the content fingerprint
that saved state and cached evaluations are keyed by."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

import jax
import numpy as np


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class JsonlWriter:
  """Appends one JSON object per line; earlier lines (e.g. before a resume) are never rewritten.

  ``records`` holds every line of the file: those already there when it was opened (read once) and
  those written since, so a plot at the end of a run needs no second read of the file.
  """

  def __init__(self, path: str | Path):
    self.path = Path(path)
    self.records = read_jsonl(self.path)

  def write(self, record: dict) -> None:
    line = _jsonable({"time": round(time.time(), 3), **record})
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path, "a") as f:
      f.write(json.dumps(line) + "\n")
    self.records.append(line)


def read_jsonl(path: str | Path) -> list[dict]:
  path = Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_json(path: str | Path, data: dict) -> None:
  """Writes atomically so an interrupted write never leaves a truncated file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
  os.replace(tmp, path)


def mean_metrics(records: Iterable[dict]) -> dict:
  records = list(records)
  return {k: float(np.mean([r[k] for r in records])) for k in records[0]} if records else {}


def fingerprint(*parts) -> str:
  """A short hash of JSON-able values and pytrees of arrays (by their bytes, shapes and dtypes, and the tree's
  structure): the one content key of saved attack state, sweep programs and the evaluation caches."""
  h = hashlib.blake2b(digest_size=12)
  for part in parts:
    leaves, treedef = jax.tree_util.tree_flatten(part)
    h.update(str(treedef).encode())
    for leaf in leaves:
      if isinstance(leaf, (np.ndarray, jax.Array)):
        a = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
      else:
        h.update(json.dumps(leaf, sort_keys=True, default=str).encode())
  return h.hexdigest()


class Kept:
  """The last ``entries`` values of an expensive computation, by key, least recently used dropped first.

  ``get(key, compute, owner)`` returns the kept value only when ``owner`` is the same object as when it was kept
  (None: the key alone says what the value is); otherwise it computes and keeps it. The evaluation caches (the
  private set's evaluation outputs, FID features, PRDC radii) hold a few large arrays each, keyed by content.
  """

  def __init__(self, entries: int):
    if entries < 1:
      raise ValueError(f"entries: expected at least 1, got {entries}")
    self.entries = entries
    self._values: OrderedDict = OrderedDict()

  def get(self, key: Hashable, compute: Callable[[], Any], owner: Any = None) -> Any:
    hit = self._values.get(key)
    if hit is not None and hit[0] is owner:
      self._values.move_to_end(key)
      return hit[1]
    value = compute()
    self._values[key] = (owner, value)
    self._values.move_to_end(key)
    while len(self._values) > self.entries:
      self._values.popitem(last=False)
    return value

  def __len__(self) -> int:
    return len(self._values)

  def clear(self) -> None:
    self._values.clear()
