"""Orbax checkpoints that know which model they belong to, and whether their bytes are intact.

Each checkpoint step holds two items: ``state`` (the pytree) and ``meta`` (JSON: the kind of
object, its config, and the shape signature of its variables). Before restoring, the meta is
compared with what the caller expects, so a checkpoint of another architecture is refused
with one line instead of an orbax traceback.

Integrity: once orbax has finished writing a step, a SHA-256 over every file of the step
directory (paths and contents) is written beside them in ``jaxmi_sha256.json``. Every restore
verifies it. The newest step that fails (flipped bytes, a truncated file, a checksum that was
never written because the process died in between) is skipped with one line on stderr and the
newest intact step is used; if no step is intact, a one-line CheckpointError. Checkpoints
written before checksums existed (their meta has no ``integrity`` field) are accepted with a
one-line note: refusing them would orphan every existing workdir, and they are no less safe
than before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxmi.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKSUM_FILE = "jaxmi_sha256.json"
INTEGRITY = "sha256-v1"  # recorded in the meta of every step saved with a checksum


def step_digest(step_dir: Path) -> str:
  """SHA-256 over the relative paths and contents of every file under ``step_dir`` but the checksum file."""
  h = hashlib.sha256()
  files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE)
  for p in files:
    rel = p.relative_to(step_dir).as_posix().encode()
    h.update(len(rel).to_bytes(8, "little") + rel + p.stat().st_size.to_bytes(8, "little"))
    with open(p, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()


class Checkpointer:
  """Save every ``every_steps`` steps, keep the newest ``keep``, resume from the newest intact one.

  ``create=False`` (loading) writes nothing: a missing directory is a one-line CheckpointError.

  Args:
    directory: one orbax step directory per saved step, each with its ``state``, ``meta`` and checksum.
    every_steps: ``save`` writes only at multiples of it (unless forced).
    keep: the newest steps kept; older ones are deleted.
    create: create ``directory`` (training) or require it (loading).
  """

  def __init__(self, directory: str | Path, *, every_steps: int = 1000, keep: int = 3, create: bool = True):
    self.directory = Path(directory).absolute()
    self.every_steps = max(every_steps, 1)
    if not create and not self.directory.is_dir():
      raise CheckpointError(f"{self.directory}: no checkpoint found (the directory does not exist)")
    # The interval is applied here: orbax's own policy also saves whenever none exists yet.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)
    self._problems: dict[int, str | None] = {}  # step -> why it is not intact (None: intact), cached
    self._reported: set[int] = set()

  # -- integrity ----------------------------------------------------------------------------------

  def problem(self, step: int) -> str | None:
    """Why ``step`` is not intact, or None when its checksum matches (or it predates checksums)."""
    if step not in self._problems:
      self._problems[step] = self._check(step)
    return self._problems[step]

  def _check(self, step: int) -> str | None:
    step_dir = self.directory / str(step)
    recorded = step_dir / CHECKSUM_FILE
    if recorded.exists():
      try:
        want = json.loads(recorded.read_text())["sha256"]
      except (ValueError, KeyError, TypeError):
        return f"unreadable {CHECKSUM_FILE}"
      return None if step_digest(step_dir) == want else "checksum mismatch: its files changed after saving"
    try:
      meta = self._read_meta(step)
    except Exception as e:  # noqa: BLE001 - any failure to read means the step is unusable
      return f"unreadable metadata ({type(e).__name__})"
    if meta.get("integrity"):
      return f"no {CHECKSUM_FILE} (the save did not complete)"
    if step not in self._reported:
      self._reported.add(step)
      log.warning(f"jaxmi: note: {step_dir} was written without a checksum (an older jaxmi); loading it unverified")
    return None

  def _write_checksum(self, step: int) -> None:
    step_dir = self.directory / str(step)
    tmp = step_dir / (CHECKSUM_FILE + ".tmp")
    tmp.write_text(json.dumps({"sha256": step_digest(step_dir)}) + "\n")
    os.replace(tmp, step_dir / CHECKSUM_FILE)
    self._problems[step] = None

  # -- steps --------------------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest intact step (None: no checkpoint at all). Skipped corrupt steps are reported once each."""
    steps = self.all_steps()
    skipped = []
    for step in reversed(steps):
      why = self.problem(step)
      if why is None:
        for bad, bad_why in skipped:
          if bad not in self._reported:
            self._reported.add(bad)
            log.warning(f"jaxmi: {self.directory}/{bad} is corrupt ({bad_why}); falling back to step {step}")
        return step
      skipped.append((step, why))
    if skipped:
      listed = ", ".join(f"step {s} ({w})" for s, w in skipped[:3])
      raise CheckpointError(f"{self.directory}: no intact checkpoint: {listed}; delete the directory to start over")
    return None

  def should_save(self, step: int, force: bool = False) -> bool:
    """Whether ``save(step, ..., force=force)`` would write: the interval says so and no intact step exists."""
    if not force and step % self.every_steps:
      return False
    return not (step in self._manager.all_steps() and self.problem(step) is None)

  def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
    """Saves if the interval says so (or ``force``). Returns whether it saved.

    The caller is responsible for only passing finite state (run_steps checks before every save).
    Waits for orbax to finish so the checksum covers the final files: checkpoints are rare, and a
    step without its checksum would be refused on restore anyway.
    """
    if not self.should_save(step, force):
      return False
    if step in self._manager.all_steps():  # a corrupt copy of this step: replace it
      self._manager.delete(step)
      self._problems.pop(step, None)
    saved = self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({**meta, "integrity": INTEGRITY})
      ),
      force=force,
    )
    if saved:
      self._manager.wait_until_finished()
      self._write_checksum(step)
    return saved

  def _read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def meta(self, step: int | None = None) -> dict:
    """The JSON metadata saved with ``step`` (None: the newest intact step); a CheckpointError if unreadable."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{self.directory}: no checkpoint found")
    try:
      return self._read_meta(step)
    except Exception as e:
      raise CheckpointError(
        f"{self.directory}: step {step} has no readable metadata ({type(e).__name__}); "
        "expected a checkpoint written by jaxmi"
      ) from e

  def restore(self, abstract_state: Any, expected_meta: dict, step: int | None = None) -> Any:
    """Restores into the structure of ``abstract_state`` (None: as saved) after checking integrity and meta.

    Args:
      abstract_state: a pytree (arrays or shape-dtype structs) whose structure, shapes and dtypes the state
        is restored into; None restores the saved structure.
      expected_meta: what ``step``'s metadata must match (``check_compatible``): kind, architecture, signature.
      step: the step to restore; None: the newest intact one.

    Returns:
      The restored state pytree; a one-line CheckpointError when it is missing, corrupt or another model's.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{self.directory}: no checkpoint found")
    why = self.problem(step)
    if why is not None:
      raise CheckpointError(f"{self.directory}/{step}: is corrupt ({why}); delete that step to use an older one")
    check_compatible(self.meta(step), expected_meta, f"{self.directory}/{step}")
    abstract = None if abstract_state is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    except Exception as e:
      raise CheckpointError(
        f"{self.directory}/{step}: could not be restored ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
      ) from e

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def check_compatible(found: dict, expected: dict, where: str) -> None:
  """Raises a one-line CheckpointError when ``found`` meta is not what ``expected`` describes."""
  if found.get("kind") != expected.get("kind"):
    raise CheckpointError(f"{where}: holds a '{found.get('kind')}' checkpoint; expected '{expected.get('kind')}'")
  if found.get("arch") != expected.get("arch"):
    raise CheckpointError(
      f"{where}: holds a checkpoint of architecture {describe(found.get('arch'))}; "
      f"the config expects {describe(expected.get('arch'))}; use another --workdir "
      "or the matching config"
    )
  got, want = found.get("signature", {}), expected.get("signature", {})
  if got != want:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    detail = (
      f"missing {missing[0]}"
      if missing
      else f"unexpected {extra[0]}"
      if extra
      else f"{changed[0]} has shape {got[changed[0]]}, expected {want[changed[0]]}"
    )
    raise CheckpointError(
      f"{where}: parameters do not match the configured model ({detail}; "
      f"{len(missing)} missing, {len(extra)} unexpected, {len(changed)} reshaped)"
    )


def describe(arch: Any) -> str:
  if isinstance(arch, dict):
    keys = ("arch", "width", "blocks", "vgg_layout", "width_divisor", "head", "num_classes", "image_shape")
    return "(" + ", ".join(f"{k}={arch[k]}" for k in keys if k in arch) + ")"
  return repr(arch)
