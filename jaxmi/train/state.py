"""The classifier training state: one frozen pytree, donated to every step."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


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
  step: jax.Array          # int32 scalar: optimiser steps taken
  params: Any
  batch_stats: Any         # BatchNorm running statistics (not trained by the optimiser)
  opt_state: Any
  defense_state: Any       # extra state a defense carries (e.g. MID's schedule), {} when none
  rng: jax.Array           # raw uint32[2] key; per-step keys are fold_in(rng, step)

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}
