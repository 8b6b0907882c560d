"""GMI (Zhang et al., CVPR 2020, "The Secret Revealer"): invert through a GAN prior.

  min_z  -D(G(z)) + lambda * CE(T(G(z)), y),   z clipped to [-1, 1]

Nesterov SGD (lr 0.02, momentum 0.9), lambda = 100, 1500-2400 steps, 5 restarts; each
identity keeps the restart with the highest raw target logit of its class, the reference's
``score[i, y_i]`` (attacks.md section 2). ``inversion.select_by="probability"`` keeps the highest
softmax probability instead (jaxmi's former default): it also rewards pushing the other classes
down, and saturates at 1 so confident restarts tie; it is kept as an option, not the default,
because it is not what the published numbers used.
LOMMA on top is configuration: ``identity_loss="logit"``, ``feature_reg_weight``, and
surrogate models in the attacked ensemble (AttackConfig.surrogates).
"""

from __future__ import annotations

from jaxmi.attacks.engine import (AttackModels, FeatureRegTerm, IdentityTerm, InversionConfig, Inverter, PointLatent,
                                  PriorTerm)


def loss_terms(cfg: InversionConfig) -> list:
  """Prior + identity (+ LOMMA's feature regulariser): the objective GMI and KEDMI share."""
  terms = [IdentityTerm(cfg.identity_weight, cfg.identity_loss)]
  if cfg.prior_weight:
    terms.insert(0, PriorTerm(cfg.prior_weight))
  if cfg.feature_reg_weight:  # LOMMA's regulariser; p_reg travels in variables["extras"]
    terms.append(FeatureRegTerm(cfg.feature_reg_weight))
  return terms


def build_gmi(models: AttackModels, z_dim: int, cfg: InversionConfig) -> Inverter:
  return Inverter(models, PointLatent(z_dim, cfg.clip_z), loss_terms(cfg), cfg)
