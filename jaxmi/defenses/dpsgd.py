"""DP-SGD (Abadi et al., 2016) as the MID paper's baseline, with the privacy it actually buys.

Each example's gradient is clipped to L2 norm ``l2_clip``; the clipped gradients are summed,
Gaussian noise N(0, (noise_multiplier * l2_clip)^2) is added and the sum is divided by the
batch size (defenses.md 4.4: C = 1, sigma = 0.01 in mi-defense). The aggregation is the first
transform of the optax chain; the optimiser (SGD, momentum, weight decay) follows unchanged.

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
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmi.errors import ConfigError
from jaxmi.train.step import Defense


class DPAggregateState(NamedTuple):
  key: jax.Array   # raw uint32 key: checkpoints as a plain array


def private_aggregate(l2_clip: float, noise_multiplier: float, seed: int = 0) -> optax.GradientTransformation:
  """Per-example clip, sum, add Gaussian noise, divide by the batch size. Input: gradients with a batch axis."""

  def init_fn(params):
    del params
    return DPAggregateState(jax.random.PRNGKey(seed))

  def update_fn(per_example, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(per_example)
    batch = leaves[0].shape[0]
    norms = jnp.sqrt(sum(jnp.sum(jnp.square(g.reshape(batch, -1)), axis=1) for g in leaves))
    scale = jnp.minimum(1.0, l2_clip / jnp.maximum(norms, 1e-12))
    key, *noise_keys = jax.random.split(state.key, len(leaves) + 1)
    noised = [(jnp.tensordot(scale, g, axes=1) + noise_multiplier * l2_clip * jax.random.normal(k, g.shape[1:], g.dtype))
              / batch for g, k in zip(leaves, noise_keys)]
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


@dataclasses.dataclass(frozen=True)
class DPSGD(Defense):
  name: str = "dp_sgd"
  l2_clip: float = 1.0              # C: per-example gradient norm bound
  noise_multiplier: float = 1.0     # sigma: noise std / C (the reference's 0.01 gives no meaningful epsilon)
  delta: float = 1e-5               # the delta of the reported (epsilon, delta)
  seed: int = 0

  per_example_grads: ClassVar[bool] = True

  def check(self, cfg) -> None:
    if cfg.model.norm != "group":
      raise ConfigError("dp_sgd: model.norm must be 'group': BatchNorm's batch statistics mix examples, so "
                        "per-example gradients (and their clipping) would not bound one example's influence")
    if cfg.model.head == "vib":
      raise ConfigError("dp_sgd: combine it with a linear or low_rank head, not vib")
    if self.l2_clip <= 0 or self.noise_multiplier < 0:
      raise ConfigError(f"dp_sgd: expected l2_clip > 0 and noise_multiplier >= 0, got {self.l2_clip}, "
                        f"{self.noise_multiplier}")

  def optimizer(self, tx: optax.GradientTransformation, params) -> optax.GradientTransformation:
    return optax.chain(private_aggregate(self.l2_clip, self.noise_multiplier, self.seed), tx)

  def report(self, *, steps: int, batch_size: int, num_examples: int) -> dict:
    rate = min(batch_size / max(num_examples, 1), 1.0)
    eps = dp_epsilon(noise_multiplier=self.noise_multiplier, sampling_rate=rate, steps=steps, delta=self.delta)
    return {"privacy": {"epsilon": eps, "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                        "l2_clip": self.l2_clip, "steps": steps, "sampling_rate": rate,
                        "accountant": "RDP (dp_accounting), Poisson sampling assumed"}}
