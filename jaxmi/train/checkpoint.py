"""Orbax checkpoints that know which model they belong to.

Each checkpoint step holds two items: ``state`` (the pytree) and ``meta`` (JSON: the kind of
object, its config, and the shape signature of its variables). Before restoring, the meta is
compared with what the caller expects, so a checkpoint of another architecture is refused
with one line instead of an orbax traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxmi.errors import CheckpointError


class Checkpointer:
  """Save every ``every_steps`` steps, keep the newest ``keep``, resume from the latest."""

  def __init__(self, directory: str | Path, *, every_steps: int = 1000, keep: int = 3):
    self.directory = Path(directory).absolute()
    self.every_steps = max(every_steps, 1)
    # The interval is applied here: orbax's own policy also saves whenever none exists yet.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
    """Saves if the interval says so (or ``force``). Returns whether it saved."""
    if not force and step % self.every_steps:
      return False
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           meta=ocp.args.JsonSave(meta)), force=force)

  def meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{self.directory}: no checkpoint found")
    try:
      return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:
      raise CheckpointError(f"{self.directory}: step {step} has no readable metadata ({type(e).__name__}); "
                            "expected a checkpoint written by jaxmi") from e

  def restore(self, abstract_state: Any, expected_meta: dict, step: int | None = None) -> Any:
    """Restores into the structure of ``abstract_state`` (None: as saved) after checking the meta."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{self.directory}: no checkpoint found")
    check_compatible(self.meta(step), expected_meta, f"{self.directory}/{step}")
    abstract = None if abstract_state is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    except Exception as e:
      raise CheckpointError(f"{self.directory}/{step}: could not be restored ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]})") from e

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
    raise CheckpointError(f"{where}: holds a checkpoint of architecture {describe(found.get('arch'))}; "
                          f"the config expects {describe(expected.get('arch'))}; use another --workdir "
                          "or the matching config")
  got, want = found.get("signature", {}), expected.get("signature", {})
  if got != want:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
              f"{changed[0]} has shape {got[changed[0]]}, expected {want[changed[0]]}")
    raise CheckpointError(f"{where}: parameters do not match the configured model ({detail}; "
                          f"{len(missing)} missing, {len(extra)} unexpected, {len(changed)} reshaped)")


def describe(arch: Any) -> str:
  if isinstance(arch, dict):
    keys = ("arch", "width", "blocks", "vgg_layout", "width_divisor", "head", "num_classes", "image_shape")
    return "(" + ", ".join(f"{k}={arch[k]}" for k in keys if k in arch) + ")"
  return repr(arch)
