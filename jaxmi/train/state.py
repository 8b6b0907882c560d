"""The classifier training state: one frozen pytree, donated to every step."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class StateDict:
  """Mixin for state dataclasses: orbax saves plain dicts most robustly, so that is the on-disk layout."""

  def as_dict(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d: dict):
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState(StateDict):
  """What a classifier's ``train_step`` reads and returns; ``variables`` is the form ``module.apply`` takes."""

  step: jax.Array  # int32 scalar: optimiser steps taken
  params: Any
  batch_stats: Any  # BatchNorm running statistics (not trained by the optimiser)
  opt_state: Any
  defense_state: Any  # the defense's own arrays (``Defense.init_state``; Trap-MID's triggers and discriminator),
  # checkpointed and resumed with the rest; {} for the defenses without any (NLS's schedule is a function of ``step``)
  rng: jax.Array  # raw uint32[2] key; per-step keys are fold_in(rng, step)

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def _float_leaves(tree) -> list:
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


@jax.jit
def all_finite(tree) -> jax.Array:
  """One device-side bool: every float leaf of ``tree`` is finite (a reduction, no host sync until read)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in _float_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def first_nonfinite_leaf(tree) -> str | None:
  """The path of the first float leaf holding NaN/inf (host side; for error messages only)."""
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    x = np.asarray(jax.device_get(x))
    if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
      return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  return None
