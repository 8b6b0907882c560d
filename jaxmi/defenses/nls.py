"""Negative label smoothing (NLS): label smoothing with a negative factor as a model-inversion defense.

Lukas Struppek, Dominik Hintersdorf & Kristian Kersting, "Be Careful What You Smooth For: Label Smoothing
Can Be a Privacy Shield but Also a Catalyst for Model Inversion Attacks", ICLR 2024 (official code
LukasStruppek/Plug-and-Play-Attacks, ``losses/label_smoothing.py``). Label smoothing with alpha < 0:
the target distribution (1 - alpha) * onehot + alpha / K, i.e.

  loss = (1 - alpha_t) * NLL_y + alpha_t * mean_k(-log p_k)  =  CE + alpha_t * (mean_k(-log p_k) - CE),

with alpha = -0.05 and the reference schedule (``ls_scheduler``), written for any length E:
alpha_t = 0 for epoch < E/2, alpha * (epoch + 1 - E/2) / (E/2) for E/2 <= epoch < 3E/4, alpha
after (E = 100: 0 until 50, a ramp to alpha/2 by 74, then alpha). The schedule is applied
inside the step from the step counter and the run's length (``RunFacts``): the official code
defined it and, until a later fix, never used it, and without it accuracy collapses. A 1-epoch
run never leaves alpha_t = 0: it is plain cross-entropy, so ``defend`` warns and the summary
records ``effective`` (the alpha reached and the number of steps with alpha_t != 0).
"""

from __future__ import annotations

import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmi.errors import ConfigError
from jaxmi.train.step import Defense, RunFacts


def nls_alpha(epoch, alpha: float, epochs: int):
  """alpha_t at (integer) ``epoch`` of ``epochs``; works on traced values."""
  start, full = epochs / 2, 3 * epochs / 4
  ramp = alpha * (epoch + 1 - start) / (epochs - start)
  return jnp.where(epoch < start, 0.0, jnp.where(epoch < full, ramp, alpha))


@typing.final
@dataclasses.dataclass(frozen=True)
class NegativeLabelSmoothing(Defense):
  name: str = "nls"
  alpha: float = -0.05
  schedule: bool = True  # the reference schedule; False = alpha from the first step

  hyper_fields: typing.ClassVar[tuple[str, ...]] = ("alpha",)  # a grid of alphas trains as one program

  def __post_init__(self):
    if self.alpha >= 1.0:
      raise ConfigError(f"defense.alpha: {self.alpha} must be below 1 (negative for NLS)")

  def current_alpha(self, step, facts: RunFacts):
    """alpha_t at optimiser step ``step`` (traced or not) of the run ``facts`` describes."""
    if not self.schedule:
      return jnp.asarray(self.alpha, jnp.float32)
    return nls_alpha(step // max(facts.steps_per_epoch, 1), self.alpha, facts.epochs)

  def warning(self, epochs: int) -> str:
    if not self.schedule or self.alpha == 0 or any(float(nls_alpha(e, self.alpha, epochs)) for e in range(epochs)):
      return ""
    return (
      f"defense nls: alpha stays 0 for all {epochs} epoch(s) (the schedule starts at epoch {epochs / 2:g}), so "
      "this run trains plain cross-entropy; train for at least 2 epochs or set defense.schedule=False"
    )

  def report(self, facts: RunFacts, steps: int) -> dict:
    """What the schedule actually applied: a run too short for it is no defense, whatever alpha says."""
    alphas = np.asarray(jax.vmap(lambda s: self.current_alpha(s, facts))(jnp.arange(steps))) if steps else np.zeros(0)
    # str(float32) is its shortest round-trip decimal: -0.05, not -0.05000000074505806.
    return {
      "effective": {
        "alpha_reached": float(str(alphas[-1])) if steps else 0.0,
        "active_steps": int(np.count_nonzero(alphas)),
      }
    }

  def regularizer(self, out, labels, *, images, params, step, facts):
    alpha_t = self.current_alpha(step, facts)
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels)
    uniform = jnp.mean(-jax.nn.log_softmax(out.logits), axis=-1)
    return alpha_t * jnp.mean(uniform - ce), {"alpha": alpha_t}
