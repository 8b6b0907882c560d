"""The host loop shared by every trainer: steps, metric flushes, epoch hooks, checkpoints, Ctrl-C.

Metrics stay on the device until a log step, where the pending ones are fetched together
(the only host sync). A checkpoint is written every ``ckpt.every_steps`` and at the end; Ctrl-C
(or ``stop_at_step``) ends the loop at a step boundary after a checkpoint, so rerunning the
same command resumes exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from jaxmi import records
from jaxmi.train.checkpoint import Checkpointer
from jaxmi.train.interrupt import StopOnInterrupt


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int
  stopped_early: bool              # by Ctrl-C or stop_at_step, after saving a checkpoint
  by_user: bool                    # Ctrl-C


def progress_bar(enabled: bool, total: int, initial: int, name: str):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True)


def run_steps(state: Any, *, name: str, step_fn: Callable, next_input: Callable, start: int, total: int,
              steps_per_epoch: int, ckpt: Checkpointer, meta: dict, writer: records.JsonlWriter, log_every: int,
              metric_prefix: str = "", epoch_end: Callable[[Any, int], dict] | None = None,
              progress: bool = True, stop_at_step: int | None = None, postfix_keys: tuple = ()) -> LoopResult:
  """Runs ``state, metrics = step_fn(state, next_input())`` from ``start`` to ``total``."""
  bar = progress_bar(progress, total, start, name)
  pending: list[dict] = []
  step = start
  save = lambda force=False: ckpt.save(step, state.as_dict(), {**meta, "step": step}, force=force)
  try:
    with StopOnInterrupt() as stop:
      while step < total:
        state, metrics = step_fn(state, next_input())
        step += 1
        pending.append(metrics)
        epoch_done = step % steps_per_epoch == 0 or step == total
        if step % log_every == 0 or epoch_done:
          mean = records.mean_metrics(jax.device_get(pending))
          pending = []
          bad = {k: v for k, v in mean.items() if not np.isfinite(v)}
          if bad:
            raise FloatingPointError(f"[{name}] non-finite metrics at step {step}: {bad}")
          record = {"step": step, "epoch": step / steps_per_epoch, **{metric_prefix + k: v for k, v in mean.items()}}
          if epoch_done and epoch_end is not None:
            record.update(epoch_end(state, step))
          writer.write(record)
          if bar is not None:
            bar.set_postfix({k.split("/")[-1]: f"{v:.4f}" for k, v in record.items() if k in postfix_keys})
        if bar is not None:
          bar.update(1)
        save()
        if stop.requested or (stop_at_step is not None and stop_at_step <= step < total):
          save(force=True)
          return LoopResult(state, step, True, stop.requested)
    save(force=True)
    return LoopResult(state, step, False, False)
  finally:
    ckpt.close()
    if bar is not None:
      bar.close()


def interrupted_message(step: int, ckpt: Checkpointer) -> str:
  return f"interrupted at step {step}; checkpoint saved in {ckpt.directory}; run the same command again to resume"
