"""DP-SGD as the MID paper's baseline, with the privacy it actually buys.

Martin Abadi, Andy Chu, Ian Goodfellow, H. Brendan McMahan, Ilya Mironov, Kunal Talwar & Li Zhang,
"Deep Learning with Differential Privacy", CCS 2016, Algorithm 1 (as run by Wang et al., AAAI 2021,
official code Jiachen-T-Wang/mi-defense, ``dp_training.py``: C = 1, sigma = 0.01). The update it
implements, for a batch of B examples:

  g~ = (1 / B) * (sum_i g_i * min(1, C / ||g_i||_2) + N(0, (sigma C)^2 I))

The step differentiates each example alone (``per_example_grads``) and hands the stacked gradients
to ``aggregate_grads``, which clips and sums them (``clip_and_sum``, as jax_privacy's
``clipped_grad``); the noise and the division by B are the first transform of the optax chain
(``noisy_mean``, whose state holds the noise key), and the optimiser (SGD, momentum, weight decay)
follows unchanged.

Per-example gradients need per-example forward passes: BatchNorm's batch statistics mix the
examples of a batch, so DP-SGD requires ``model.norm="group"``.

epsilon: the reference never computes it. ``report`` composes the sampled Gaussian mechanism
over the run with Google's RDP accountant (``dp_accounting``). It assumes Poisson sampling
with rate batch/N, while batches here are shuffled fixed-size slices: the standard
approximation made by TF-Privacy and Opacus tutorials, stated in the summary.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmi.errors import ConfigError
from jaxmi.train.step import Defense, RunFacts


def clip_and_sum(per_example, l2_clip: float):
  """sum_i g_i * min(1, C / ||g_i||): each example's gradient (leading batch axis) clipped to L2 norm C, summed."""
  leaves, treedef = jax.tree.flatten(per_example)
  batch = leaves[0].shape[0]
  norms = jnp.sqrt(sum(jnp.sum(jnp.square(g.reshape(batch, -1)), axis=1) for g in leaves))
  scale = jnp.minimum(1.0, l2_clip / jnp.maximum(norms, 1e-12))
  return jax.tree.unflatten(treedef, [jnp.tensordot(scale, g, axes=1) for g in leaves])


class DPAggregateState(NamedTuple):
  key: jax.Array  # raw uint32 key: checkpoints as a plain array


def noisy_mean(stddev: float, batch_size: int, seed: int = 0) -> optax.GradientTransformation:
  """(sum + N(0, stddev^2 I)) / batch_size, fresh noise each step: the first transform of DP-SGD's chain."""

  def init_fn(params):
    del params
    return DPAggregateState(jax.random.PRNGKey(seed))

  def update_fn(summed, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(summed)
    key, *noise_keys = jax.random.split(state.key, len(leaves) + 1)
    noised = [(g + stddev * jax.random.normal(k, g.shape, g.dtype)) / batch_size for g, k in zip(leaves, noise_keys)]
    return jax.tree.unflatten(treedef, noised), DPAggregateState(key)

  return optax.GradientTransformation(init_fn, update_fn)


def dp_epsilon(*, noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
  """epsilon of ``steps`` Poisson-sampled Gaussian mechanisms (RDP accountant); inf when no privacy."""
  import dp_accounting  # only DP-SGD runs need the accountant
  from dp_accounting import rdp

  if noise_multiplier <= 0:
    return float("inf")
  accountant = rdp.RdpAccountant()
  event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
  # The accountant logs a warning per RDP order it cannot evaluate (and then skips it): noise, not news.
  logging.disable(logging.WARNING)
  try:
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))
  finally:
    logging.disable(logging.NOTSET)


@typing.final
@dataclasses.dataclass(frozen=True)
class DPSGD(Defense):
  name: str = "dp_sgd"
  l2_clip: float = 1.0  # C: per-example gradient norm bound
  noise_multiplier: float = 1.0  # sigma: noise std / C (the reference's 0.01 gives no meaningful epsilon)
  delta: float = 1e-5  # the delta of the reported (epsilon, delta)
  seed: int = 0  # of the noise key (kept in the optimiser state)

  per_example_grads: ClassVar[bool] = True
  # A grid of noise levels trains as one program (l2_clip is shared). Its noise scale sigma * C is then a float32
  # product, within one rounding of the single run's (computed in double); equal when C = 1 (the default).
  hyper_fields: ClassVar[tuple[str, ...]] = ("noise_multiplier",)

  def check(self, cfg, facts: RunFacts) -> None:
    if cfg.model.norm != "group":
      raise ConfigError(
        "dp_sgd: model.norm must be 'group': BatchNorm's batch statistics mix examples, so "
        "per-example gradients (and their clipping) would not bound one example's influence"
      )
    if cfg.model.head == "vib":
      raise ConfigError("dp_sgd: combine it with a linear or low_rank head, not vib")
    if self.l2_clip <= 0 or self.noise_multiplier < 0:
      raise ConfigError(
        f"dp_sgd: expected l2_clip > 0 and noise_multiplier >= 0, got {self.l2_clip}, {self.noise_multiplier}"
      )

  def aggregate_grads(self, per_example):
    return clip_and_sum(per_example, self.l2_clip)

  def optimizer(self, tx: optax.GradientTransformation, params, facts: RunFacts) -> optax.GradientTransformation:
    if facts.batch_size <= 0:
      raise ValueError(f"dp_sgd: the run's batch size is needed to average the noised sum, got {facts.batch_size}")
    return optax.chain(noisy_mean(self.noise_multiplier * self.l2_clip, facts.batch_size, self.seed), tx)

  def report(self, facts: RunFacts, steps: int) -> dict:
    rate = min(facts.batch_size / max(facts.num_examples, 1), 1.0)
    eps = dp_epsilon(noise_multiplier=self.noise_multiplier, sampling_rate=rate, steps=steps, delta=self.delta)
    return {
      "privacy": {
        "epsilon": eps,
        "delta": self.delta,
        "noise_multiplier": self.noise_multiplier,
        "l2_clip": self.l2_clip,
        "steps": steps,
        "sampling_rate": rate,
        "accountant": "RDP (dp_accounting), Poisson sampling assumed",
      }
    }
