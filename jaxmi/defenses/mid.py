"""MID: mutual-information regularisation through a variational information bottleneck (VIB) head.

Tianhao Wang, Yuheng Zhang & Ruoxi Jia, "Improving Robustness to Model Inversion Attacks via Mutual
Information Regularization", AAAI 2021 (official code Jiachen-T-Wang/mi-defense, ``train_vib``). The head
(``ModelConfig(head="vib")``, ``jaxmi.nets.VIBHead``) encodes the features to N(mu, sigma^2),
classifies a sample z = mu + sigma * eps and returns mu and sigma in ``ClassifierOutput.posterior``;
the loss is the VIB objective

  L = CE(f(z), y) + beta * KL(N(mu, sigma^2) || N(0, I)),   KL = -1/2 sum_k (1 + 2 log sigma_k - mu_k^2 - sigma_k^2),

the KL summed over the latent and averaged over the batch (beta = 0.003 in the reference). The
KL bounds I(X; Z), the information the prediction can carry about the input. The released model
predicts from z = mu (deterministic); the reference also sampled at test time.
"""

from __future__ import annotations

import dataclasses
import typing

import jax.numpy as jnp

from jaxmi.errors import ConfigError
from jaxmi.train.step import Defense


def vib_kl(mu, sigma):
  """KL(N(mu, sigma^2) || N(0, I)) per example, summed over the latent dimensions."""
  return -0.5 * jnp.sum(1.0 + 2.0 * jnp.log(sigma) - mu**2 - sigma**2, axis=-1)


@typing.final
@dataclasses.dataclass(frozen=True)
class MID(Defense):
  name: str = "mid"
  beta: float = 0.003

  hyper_fields: typing.ClassVar[tuple[str, ...]] = ("beta",)  # a grid of betas trains as one program

  def check(self, cfg, facts) -> None:
    if cfg.model.head != "vib":
      raise ConfigError("model.head: MID needs the VIB head; set model.head=vib")

  def regularizer(self, out, labels, *, images, params, step, facts):
    if out.posterior is None:  # a model built outside ``check``'s reach (a test, a hand-built module)
      raise ConfigError("model.head: MID needs the VIB head; set model.head=vib")
    kl = jnp.mean(vib_kl(out.posterior.mu, out.posterior.sigma))
    return self.beta * kl, {"kl": kl}
