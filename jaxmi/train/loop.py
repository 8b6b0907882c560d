"""The host loop shared by every trainer: steps, metric flushes, epoch hooks, checkpoints, Ctrl-C.

Metrics stay on the device until a log step, where the pending ones are fetched together
(the only host sync). A checkpoint is written every ``ckpt.every_steps`` and at the end; Ctrl-C
(or ``stop_at_step``) ends the loop at a step boundary after a checkpoint, so rerunning the
same command resumes exactly.

NaN/inf never reaches disk: every step folds "all metrics finite" into one device flag (an
async dispatch, no sync); before every checkpoint the flag and one all-finite reduction over the
state's float leaves are read together, and a log step checks each pending step's metrics on the
host. Anything non-finite raises NonFiniteError naming the first step and quantity, before any
metric line, sample grid or checkpoint is written from that state, so the newest checkpoint on
disk stays the last good one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmi import records
from jaxmi.errors import NonFiniteError
from jaxmi.train.checkpoint import Checkpointer
from jaxmi.train.interrupt import StopOnInterrupt
from jaxmi.train.state import all_finite, first_nonfinite_leaf


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int
  stopped_early: bool  # by Ctrl-C or stop_at_step, after saving a checkpoint
  by_user: bool  # Ctrl-C


def progress_bar(enabled: bool, total: int, initial: int, name: str):
  if not enabled:
    return None
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True)


@jax.jit
def _fold_finite(flag: jax.Array, metrics: dict) -> jax.Array:
  return flag & all_finite(metrics)


_state_and_flag_finite = jax.jit(lambda state, flag: all_finite(state) & flag)


def nonfinite_message(name: str, what: str, step: int) -> str:
  return f"[{name}] non-finite {what} at step {step}; nothing saved from that state"


def _first_bad_metric(pending: list[dict], first_step: int, prefix: str) -> tuple[int, str] | None:
  for i, metrics in enumerate(pending):
    for k, v in metrics.items():
      if not np.all(np.isfinite(np.asarray(v, np.float64))):
        return first_step + i, prefix + k
  return None


def run_steps(
  state: Any,
  *,
  name: str,
  step_fn: Callable,
  next_input: Callable,
  start: int,
  total: int,
  steps_per_epoch: int,
  ckpt: Checkpointer,
  meta: dict,
  writer: records.JsonlWriter,
  log_every: int,
  metric_prefix: str = "",
  epoch_end: Callable[[Any, int], dict] | None = None,
  progress: bool = True,
  stop_at_step: int | None = None,
  postfix_keys: tuple = (),
) -> LoopResult:
  """Runs ``state, metrics = step_fn(state, next_input())`` from ``start`` to ``total``.

  Raises NonFiniteError (one line: step and quantity) as soon as a check sees NaN/inf.
  """
  bar = progress_bar(progress, total, start, name)
  pending: list[dict] = []  # device metrics of the steps since the last host check
  flag = jnp.array(True)  # device: every metric in ``pending`` is finite
  step = start

  def fail_if_bad(fetched: list[dict], state_ok: bool) -> None:
    bad = _first_bad_metric(fetched, step - len(fetched) + 1, metric_prefix)
    if bad is not None:
      raise NonFiniteError(nonfinite_message(name, bad[1], bad[0]))
    if not state_ok:
      leaf = first_nonfinite_leaf(state.as_dict() if hasattr(state, "as_dict") else state)
      raise NonFiniteError(nonfinite_message(name, f"{leaf or 'value'} in the training state", step))

  def save(force=False):
    nonlocal flag, pending
    if not ckpt.should_save(step, force):
      return False
    if not bool(jax.device_get(_state_and_flag_finite(state, flag))):
      fail_if_bad(jax.device_get(pending), False)
    return ckpt.save(step, state.as_dict(), {**meta, "step": step}, force=force)

  try:
    with StopOnInterrupt() as stop:
      while step < total:
        state, metrics = step_fn(state, next_input())
        step += 1
        pending.append(metrics)
        flag = _fold_finite(flag, metrics)
        epoch_done = step % steps_per_epoch == 0 or step == total
        if step % log_every == 0 or epoch_done:
          # The state check rides along with the metric fetch at epoch ends, before epoch_end uses the state.
          fetched, state_ok = jax.device_get((pending, all_finite(state) if epoch_done else True))
          fail_if_bad(fetched, bool(state_ok))
          mean = records.mean_metrics(fetched)
          pending, flag = [], jnp.array(True)
          record = {"step": step, "epoch": step / steps_per_epoch, **{metric_prefix + k: v for k, v in mean.items()}}
          if epoch_done and epoch_end is not None:
            extra = epoch_end(state, step)
            bad = [k for k, v in extra.items() if isinstance(v, (float, np.floating)) and not np.isfinite(v)]
            if bad:
              raise NonFiniteError(nonfinite_message(name, bad[0], step))
            record.update(extra)
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
