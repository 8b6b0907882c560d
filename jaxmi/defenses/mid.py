"""MID (Wang et al., AAAI 2021): mutual-information regularisation through a VIB head.

The head (``ModelConfig(head="vib")``, ``jaxmi.nets.VIBHead``) encodes the features to
N(mu, sigma^2) and classifies a sample; the loss adds beta * KL(N(mu, sigma^2) || N(0, I)),

  KL = -1/2 sum_k (1 + 2 log sigma_k - mu_k^2 - sigma_k^2),

summed over the latent and averaged over the batch (defenses.md 4.1; beta = 0.003 in the
reference). The KL bounds I(X; Z), the information the prediction can carry about the input.
The released model predicts from z = mu (deterministic); the reference also sampled at test time.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxmi.errors import ConfigError
from jaxmi.nets.classifiers import vib_statistics
from jaxmi.train.step import Defense


def vib_kl(mu, sigma):
  """KL(N(mu, sigma^2) || N(0, I)) per example, summed over the latent dimensions."""
  return -0.5 * jnp.sum(1.0 + 2.0 * jnp.log(sigma) - mu**2 - sigma**2, axis=-1)


@dataclasses.dataclass(frozen=True)
class MID(Defense):
  name: str = "mid"
  beta: float = 0.003

  def regularizer(self, out, labels, *, images, params, state, rng, step):
    head = params.get("head", {})
    if "encoder" not in head:
      raise ConfigError("model.head: MID needs the VIB head; set model.head=vib")
    encoded = out.features @ head["encoder"]["kernel"] + head["encoder"]["bias"][None, :]
    mu, sigma = vib_statistics(encoded, head["encoder"]["kernel"].shape[1] // 2)
    kl = jnp.mean(vib_kl(mu, sigma))
    return self.beta * kl, state, {"kl": kl}
