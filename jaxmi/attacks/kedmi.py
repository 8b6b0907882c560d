"""KEDMI: Chen, Kahla, Jia & Qi, "Knowledge-Enriched Distributional Model Inversion Attacks", ICCV 2021, as the
official code (SCccc21/Knowledge-Enriched-DMI, ``recovery.py``, ``dist_inversion``) computes it.

Per identity, a Gaussian over the latent space, N(mu, exp(logvar)) with mu = 0, logvar = 1 at the start, is
learned by reparameterisation:

  min_{mu, logvar}  E_eps [ Prior(G(z)) + lambda * CE(T(G(z)), y) ],   z = mu + eps * exp(logvar / 2)

with Adam(0.02), lambda = 100, 2400 steps, one distribution per identity, and evaluation on 5 images drawn
from each learned distribution. The prior is the GAN's realism score: with KEDMI's inversion-specific GAN
(``train-gan --kind kedmi``) it is -log P(real) = softplus(LSE(l)) - LSE(l); with GMI's WGAN critic it is
-D(G(z)). With a plain WGAN prior the attack runs as an ablation and says so (``run_attack`` logs a warning
naming the prior it uses).

``inversion.draw_clamp`` (0 in KEDMI's configs: KEDMI does not clip z) clamps each sampled z to [-c, c] before
the generator, as LOMMA's KEDMI path does (c = 1). The clamp collapses the learned distributions (KEDMI+LOMMA on
Fashion-MNIST: all 5 draws the same image). A clamped coordinate passes no gradient to mu or logvar, and at
the start (mu 0, std e^0.5) about half of every draw's coordinates are already clamped; Adam moves mu by ~lr
per step whatever the gradient's size, so within a few hundred steps most mu_d sit beyond the clamp with
logvar shrunk, and every draw becomes the same corner sign(mu) of [-c, c]^d. Measured on random toy networks
(tests/test_kedmi.py's ``toy_kedmi``, 600 steps, Adam 0.02): with a clamp of 1, 77-80% of the draws'
coordinates sit at +-1, in 55-61% of (identity, dimension) pairs all 5 draws are equal and the images differ
across draws by a pixel std of 0.001 (0.047 without the clamp), with the CE and the logit loss alike: the
clamp, not LOMMA's logit loss, is the cause. It is the reference's behaviour and stays LOMMA's KEDMI default;
``run_attack`` warns when all draws coincide in over half the (identity, dimension) pairs. For diverse draws
use ``draw_clamp=0`` (KEDMI's own setting).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxmi.attacks.engine import AttackModels, ExecutionConfig, InversionConfig, Inverter, Objective
from jaxmi.attacks.terms import optimizer, prior_and_identity


@dataclasses.dataclass(frozen=True)
class DistributionalLatent:
  """A Gaussian N(mu, exp(logvar)) per latent, learned by reparameterisation.

  mu starts at 0 and logvar at ``init_logvar`` (1, i.e. std e^0.5); each step draws a fresh
  z = mu + eps * exp(logvar / 2). ``clamp`` > 0 clamps the sampled z to [-clamp, clamp] before the generator.
  Evaluation draws ``draws`` z per distribution, clamped the same way as in training.
  """

  z_dim: int
  clamp: float = 0.0
  init_logvar: float = 1.0
  draws: int = 5

  def init(self, key: jax.Array) -> dict:
    # Explicit dtypes: a weakly typed start would change type after one update and force a retrace.
    return {
      "mu": jnp.zeros((self.z_dim,), jnp.float32),
      "logvar": jnp.full((self.z_dim,), self.init_logvar, jnp.float32),
    }

  def _draw(self, params: dict, eps: jax.Array) -> jax.Array:
    """eps: [..., z_dim] standard normal."""
    mu = jnp.broadcast_to(params["mu"], eps.shape)
    z = mu + eps * jnp.broadcast_to(jnp.exp(0.5 * params["logvar"]), eps.shape)
    return jnp.clip(z, -self.clamp, self.clamp) if self.clamp else z

  def sample(self, params: dict, key: jax.Array) -> jax.Array:
    return self._draw(params, jax.random.normal(key, (self.z_dim,)))

  def project(self, params: dict) -> dict:
    return params

  def final(self, params: dict, key: jax.Array) -> jax.Array:
    return self._draw(params, jax.random.normal(key, (self.draws, self.z_dim)))


def build_kedmi(
  models: AttackModels,
  z_dim: int,
  cfg: InversionConfig,
  run: ExecutionConfig = ExecutionConfig(),
  extra_terms: tuple = (),
) -> Inverter:
  """KEDMI's inverter: a learned Gaussian per identity, prior + identity (+ ``extra_terms``), ``cfg.optimizer``
  (Adam in KEDMI's configs). ``inversion.z_clip`` is GMI's and not used here."""
  latent = DistributionalLatent(z_dim, clamp=cfg.draw_clamp, init_logvar=cfg.init_logvar, draws=cfg.eval_draws)
  objective = Objective(latent, (*prior_and_identity(cfg), *extra_terms), optimizer(cfg))
  return Inverter(models, objective, cfg, run)
