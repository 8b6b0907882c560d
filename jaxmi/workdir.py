"""A run's workdir: ``Workdir`` (what every command writes through) and its lock, one writer per workdir.

The lock is an OS file lock on ``<workdir>/.lock``.

``flock`` locks belong to the open file, so the OS drops them when the process exits for any
reason (including kill -9); a stale ``.lock`` file left by a crash is simply locked again. The
lock file holds the owner's pid, for the error message only.

The lock is taken before any output is written. A workdir that did not exist is created for
the lock; if the command then fails (e.g. a config error found after locking) and nothing but
the lock was written, the directories it created are removed again, so a refused command
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from jaxmi import records
from jaxmi.errors import WorkdirBusyError

LOCK_FILE = ".lock"


def _owner(path: Path) -> str:
  try:
    pid = path.read_text().strip()
  except OSError:
    return "pid unknown"
  return f"pid {pid}" if pid.isdigit() else "pid unknown"


def _acquire(path: Path) -> int:
  """An fd holding the exclusive lock on ``path`` (the file that is at ``path`` now, not an unlinked one)."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise WorkdirBusyError(
          f"{path.parent}: in use by another jaxmi process ({_owner(path)}); wait for it to "
          "finish or use another --workdir"
        ) from None
      raise
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd
    os.close(fd)  # the previous owner unlinked the file between our open and flock: lock the new one


@contextlib.contextmanager
def locked(*workdirs: str | Path) -> Iterator[None]:
  """Holds the lock of every workdir (in a fixed order) for the duration of the block.

  Raises WorkdirBusyError (one line, naming the workdir and the other process's pid) without
  writing anything when another process holds one of them.
  """
  dirs = sorted({Path(w).absolute() for w in workdirs if w})
  created: list[Path] = []  # directories this call made, deepest last
  held: list[tuple[Path, int]] = []
  try:
    for d in dirs:
      missing = []
      p = d
      while not p.exists():
        missing.append(p)
        p = p.parent
      d.mkdir(parents=True, exist_ok=True)
      created += reversed(missing)
      path = d / LOCK_FILE
      fd = _acquire(path)
      held.append((path, fd))
      os.ftruncate(fd, 0)
      os.write(fd, f"{os.getpid()}\n".encode())
    yield
  finally:
    for path, fd in reversed(held):
      # Unlink while still holding the lock; a waiter that opened the old file re-checks the inode.
      with contextlib.suppress(OSError):
        os.unlink(path)
      os.close(fd)
    for d in reversed(created):
      with contextlib.suppress(OSError):
        d.rmdir()  # only succeeds if nothing was written there


class Workdir:
  """A run's output directory: every command writes through one of these.

  It holds ``metrics.jsonl`` (appended once per log interval, kept in memory for the final plots),
  JSON results (written atomically: a kill never leaves half a file), ``checkpoints/`` and the
  plots, and takes the directory's lock. A run receives it as an argument, as flax's
  ``train_and_evaluate(config, workdir)`` does; the config says what to compute, never where.
  """

  def __init__(self, path: str | Path):
    self.path = Path(path)
    self._metrics: records.JsonlWriter | None = None

  @classmethod
  def of(cls, workdir: "str | Path | Workdir") -> "Workdir":
    return workdir if isinstance(workdir, Workdir) else cls(workdir)

  def __truediv__(self, name: str) -> Path:
    return self.path / name

  def __fspath__(self) -> str:
    return os.fspath(self.path)

  def __str__(self) -> str:
    return str(self.path)

  def __repr__(self) -> str:
    return f"Workdir({str(self.path)!r})"

  @property
  def checkpoints(self) -> Path:
    return self.path / "checkpoints"

  @property
  def metrics(self) -> records.JsonlWriter:
    """``metrics.jsonl``: ``.write(record)`` appends a line, ``.records`` holds every line so far."""
    if self._metrics is None:
      self._metrics = records.JsonlWriter(self.path / "metrics.jsonl")
    return self._metrics

  def write_json(self, name: str, data: dict) -> Path:
    """Writes ``<workdir>/<name>`` atomically; returns its path."""
    records.write_json(self.path / name, data)
    return self.path / name

  def lock(self, *also: "str | Path | Workdir | None"):
    """The lock of this workdir (and of ``also``) for the duration of a ``with`` block; see ``locked``."""
    return locked(self.path, *(Path(w) for w in also if w))
