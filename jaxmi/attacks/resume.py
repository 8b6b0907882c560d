"""Resumable attack state: each chunk's carry (latents + optimiser state + step) saved every N steps.

``<workdir>/attack_state/chunk_<c>.npz`` holds, for chunk ``c``, either its carry after some step
and the loss history so far, or (``done``) its final outputs, so a rerun of the same command
continues where the last one stopped and never recomputes a finished chunk. Every file is written
to a temporary name and moved into place with ``os.replace``: a kill leaves the previous version.

Each file records two fingerprints: ``config`` (hash of the attack config without its name,
workdir and checkpoint interval, plus the bytes of every network's variables) and ``layout``
(chunk size, device count, steps per call): a rerun whose config, models or layout differ
refuses to resume with one line instead of mixing states.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from jaxmi.errors import ConfigError
from jaxmi.records import fingerprint

log = logging.getLogger(__name__)


class AttackState:
  """Reads and writes the per-chunk state files of one attack workdir."""

  def __init__(self, directory: str | Path, config_fp: str, every: int, *, write: bool = True):
    self.directory, self.config_fp, self.every, self.write = Path(directory), config_fp, every, write
    self.layout_fp = None
    self.layout_text = ""

  def _files(self) -> list[Path]:
    # Temporary files are named ``.chunk_*.tmp`` so that a kill during a write never leaves a
    # half-written file that this glob would read.
    return sorted(self.directory.glob("chunk_*.npz")) if self.directory.is_dir() else []

  def _read(self, path: Path, keys: tuple[str, ...] | None = None) -> dict | None:
    """``keys`` (default: all) of one state file, or None (and the file removed) if it cannot be read.

    An npz member is read only when asked for: the fingerprint checks must not load every chunk's latents.
    """
    try:
      with np.load(path) as f:
        return {k: f[k] for k in (f.files if keys is None else keys)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
      # Only a damaged disk gets here (writes are atomic); recomputing that chunk is always correct.
      log.warning(f"jaxmi: note: {path}: unreadable ({type(e).__name__}); that chunk starts over")
      if self.write:
        path.unlink(missing_ok=True)
      return None

  def foreign(self) -> str | None:
    """The config fingerprint of saved state written by another config/models, else None."""
    for path in self._files():
      f = self._read(path, ("config_fp",))
      if f is not None and str(f["config_fp"]) != self.config_fp:
        return str(f["config_fp"])
    return None

  def exists(self) -> bool:
    return bool(self._files())

  def clear(self) -> None:
    if self.directory.is_dir():
      shutil.rmtree(self.directory)

  def bind_layout(self, layout: dict) -> None:
    """Called by the engine once it knows the chunking; refuses state saved with another layout."""
    self.layout_fp = fingerprint(layout)
    self.layout_text = ", ".join(f"{k} {v}" for k, v in layout.items())
    for path in self._files():
      f = self._read(path, ("layout_fp", "layout_text"))
      if f is not None and str(f["layout_fp"]) != self.layout_fp:
        raise ConfigError(
          f"{self.directory}: was saved with another chunk layout ({f['layout_text']}); this run "
          f"has {self.layout_text}; rerun with the same execution.max_batch/devices/unroll, "
          "or pass --overwrite to start over"
        )

  def load(self, chunk: int) -> dict | None:
    path = self.directory / f"chunk_{chunk:05d}.npz"
    if not path.exists():
      return None
    return self._read(path)

  def save(self, chunk: int, arrays: dict) -> None:
    """Atomically replaces chunk ``chunk``'s file with ``arrays`` (+ fingerprints)."""
    if not self.write:
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    path = self.directory / f"chunk_{chunk:05d}.npz"
    tmp = path.with_name(f".{path.stem}.tmp")  # outside the ``chunk_*.npz`` glob while half-written
    with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a bare name
      np.savez(fh, config_fp=self.config_fp, layout_fp=self.layout_fp, layout_text=self.layout_text, **arrays)
      fh.flush()
      os.fsync(fh.fileno())
    os.replace(tmp, path)
