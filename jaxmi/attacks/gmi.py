"""GMI: Zhang, Jia, Pei, Wang, Li & Song, "The Secret Revealer: Generative Model-Inversion Attacks Against Deep
Neural Networks", CVPR 2020. Inversion through a GAN prior trained on public data, as the official code
(AI-secure/GMI-Attack, ``Celeba/attack.py``, ``inversion``) computes it:

  min_z  -D(G(z)) + lambda * CE(T(G(z)), y),   z clipped to [-1, 1] after every update

the prior loss -D(G(z)) of the WGAN critic plus lambda = 100 times the identity loss, optimised by hand-written
Nesterov SGD (lr 0.02, momentum 0.9; 1500 steps, 5 restarts):

  v' = m v - lr g;   z <- clip(z - m v + (1 + m) v', -1, 1)

which is ``optax.sgd(lr, momentum, nesterov=True)`` followed by the clip (tests/test_attacks.py checks it).
Each identity keeps the restart with the highest raw target logit of its class, the reference's
``score[i, y_i]``; ``inversion.select_by="probability"`` keeps the highest softmax probability instead (it
also rewards pushing the other classes down, and saturates at 1 so confident restarts tie).
LOMMA on top (``jaxmi.attacks.lomma``) changes the identity loss, adds a term and attacks surrogates too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxmi.attacks.engine import AttackModels, ExecutionConfig, InversionConfig, Inverter, Objective
from jaxmi.attacks.terms import optimizer, prior_and_identity
from jaxmi.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PointLatent:
  """One z per latent: z0 ~ N(0, I), optimised directly, clipped to [-clip, clip] after each update (0: never)."""

  z_dim: int
  clip: float = 1.0
  draws: int = 1

  def init(self, key: jax.Array) -> jax.Array:
    return jax.random.normal(key, (self.z_dim,))

  def sample(self, params: jax.Array, key: jax.Array) -> jax.Array:
    return params

  def project(self, params: jax.Array) -> jax.Array:
    return jnp.clip(params, -self.clip, self.clip) if self.clip else params

  def final(self, params: jax.Array, key: jax.Array) -> jax.Array:
    return self.project(params)[None]


def build_gmi(
  models: AttackModels,
  z_dim: int,
  cfg: InversionConfig,
  run: ExecutionConfig = ExecutionConfig(),
  extra_terms: tuple = (),
) -> Inverter:
  """GMI's inverter: a clipped point latent, prior + identity (+ ``extra_terms``, e.g. LOMMA's), Nesterov SGD."""
  if cfg.draw_clamp:
    raise ConfigError(
      f"inversion.draw_clamp: {cfg.draw_clamp} clamps KEDMI's sampled z; GMI bounds z with inversion.z_clip"
    )
  objective = Objective(PointLatent(z_dim, cfg.z_clip), (*prior_and_identity(cfg), *extra_terms), optimizer(cfg))
  return Inverter(models, objective, cfg, run)
