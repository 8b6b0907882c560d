"""What an inversion optimises, as declared interfaces: a latent parametrisation and loss terms.

A latent attack is (latent parametrisation, loss terms, optimiser); the engine (``jaxmi.attacks.engine``)
runs any such triple over many latents at once. This module declares the two interfaces and holds the terms
GMI and KEDMI share, the GAN prior and the identity loss; the method modules (``gmi``, ``kedmi``, ``lomma``)
hold their own latents and terms and assemble them.

A loss term is a pytree (``jax.tree_util.register_dataclass``): its array fields (LOMMA's p_reg) are data,
so they enter the compiled program as arguments like the networks' variables; its other fields (weight,
name, options) are static. ``needs_critic`` is a declared class attribute: the engine evaluates the GAN's
critic only when some term reads the realism score.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from jaxmi.errors import ConfigError
from jaxmi.nets.plg import max_margin  # PLG-MI's identity loss, shared with its GAN's training


class Forward(NamedTuple):
  """What loss terms see for one latent."""

  image: jax.Array  # [H, W, C] the generated image
  critic_score: jax.Array  # scalar realism s(G(z)): D(G(z)) or KEDMI's log P(real); 0 without a critic
  target_logits: tuple  # per attacked model (the target first): [num_classes] ([views, ...] when augmented)
  target_features: tuple  # per attacked model: [feature_dim] ([views, ...] when augmented)


class Latent(Protocol):
  """A latent parametrisation: what is optimised per (identity, restart) and how it becomes generator input.

  ``params`` is any pytree of per-latent arrays; the engine ``vmap``s every method over latents.
  """

  draws: int  # images evaluated per optimised latent

  def init(self, key: jax.Array) -> Any:
    """The initial parameters of one latent."""

  def sample(self, params: Any, key: jax.Array) -> jax.Array:
    """The z [z_dim] fed to the generator in one step (``key`` is fresh every step)."""

  def project(self, params: Any) -> Any:
    """The parameters after an optimiser update (e.g. clipped back into a box)."""

  def final(self, params: Any, key: jax.Array) -> jax.Array:
    """The [draws, z_dim] latents whose images are evaluated."""


class LossTerm(Protocol):
  """One weighted term of the objective of a latent; the engine minimises sum(weight * term) / reference_batch."""

  name: str  # key of the term in the loss history
  weight: float
  needs_critic: ClassVar[bool]  # whether the term reads ``Forward.critic_score``

  def __call__(self, f: Forward, label: jax.Array) -> jax.Array:
    """The unweighted scalar loss of one latent attacking class ``label``."""


IDENTITY_LOSSES = ("ce", "logit", "max_margin")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PriorTerm:
  """The GAN prior: minus the critic's realism score, -D(G(z)) for GMI's WGAN critic and
  -log sigmoid(LSE(l(G(z)))) = softplus(LSE) - LSE for KEDMI's discriminator."""

  weight: float = dataclasses.field(default=1.0, metadata={"static": True})
  name: str = dataclasses.field(default="prior", metadata={"static": True})
  needs_critic: ClassVar[bool] = True

  def __call__(self, f: Forward, label: jax.Array) -> jax.Array:
    return -f.critic_score


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class IdentityTerm:
  """lambda * identity loss, averaged over the attacked models (the target, plus LOMMA's surrogates).

  ``ce``: cross-entropy (GMI, KEDMI); ``logit``: the negative raw logit of the attacked class (LOMMA);
  ``max_margin``: ``max_margin`` (PLG-MI; ``jaxmi.nets.plg``).
  """

  weight: float = dataclasses.field(default=100.0, metadata={"static": True})
  loss: str = dataclasses.field(default="ce", metadata={"static": True})
  name: str = dataclasses.field(default="identity", metadata={"static": True})
  needs_critic: ClassVar[bool] = False

  def __call__(self, f: Forward, label: jax.Array) -> jax.Array:
    per_model = []
    for logits in f.target_logits:
      # Augmented views ([views, K]): their losses add up, as PLG-MI's L(T(aug1 x)) + L(T(aug2 x)).
      loss = self.one_view if logits.ndim == 1 else lambda l, y: jnp.sum(jax.vmap(self.one_view, (0, None))(l, y))
      per_model.append(loss(logits, label))
    return jnp.mean(jnp.stack(per_model))

  def one_view(self, logits: jax.Array, label: jax.Array) -> jax.Array:
    if self.loss == "ce":
      return optax.softmax_cross_entropy_with_integer_labels(logits, label)
    if self.loss == "logit":
      return -logits[label]
    if self.loss == "max_margin":
      return max_margin(logits, label)
    raise ConfigError(f"inversion.identity_loss: unknown '{self.loss}'; expected one of {', '.join(IDENTITY_LOSSES)}")


def prior_and_identity(cfg) -> list:
  """The objective GMI and KEDMI share: prior (unless its weight is 0) + identity. ``cfg``: InversionConfig."""
  terms = [IdentityTerm(cfg.identity_weight, cfg.identity_loss)]
  if cfg.prior_weight:
    terms.insert(0, PriorTerm(cfg.prior_weight))
  return terms


def optimizer(cfg) -> optax.GradientTransformation:
  """``cfg.optimizer`` over the latent parameters: GMI's Nesterov SGD or KEDMI's Adam. ``cfg``: InversionConfig."""
  if cfg.optimizer == "nesterov":
    return optax.sgd(cfg.learning_rate, momentum=cfg.momentum, nesterov=True)
  if cfg.optimizer == "adam":
    return optax.adam(cfg.learning_rate)
  raise ConfigError(f"inversion.optimizer: unknown '{cfg.optimizer}'; expected nesterov or adam")
