"""Model-inversion attacks on top of one batched inversion engine.

``terms`` declares what an attack optimises (latent parametrisation and loss terms, as Protocols), ``engine``
runs it (``InversionConfig``: what is optimised; ``ExecutionConfig``: how it runs), and each method module
builds its objective: ``gmi``, ``kedmi``, ``plg`` (PLG-MI), and ``lomma`` on top of GMI or KEDMI. The driver
that loads models and writes results is ``jaxmi.experiments.attack``.
"""

from jaxmi.attacks.engine import (
  AttackModels,
  ExecutionConfig,
  InversionConfig,
  InversionResult,
  Inverter,
  Objective,
  RunStats,
)
from jaxmi.attacks.gmi import PointLatent, build_gmi
from jaxmi.attacks.kedmi import DistributionalLatent, build_kedmi
from jaxmi.attacks.lomma import FeatureRegTerm, lomma_terms, public_feature_reg
from jaxmi.attacks.plg import build_plg
from jaxmi.attacks.terms import Forward, IdentityTerm, Latent, LossTerm, PriorTerm, max_margin

# name -> builder(models, z_dim, InversionConfig, ExecutionConfig, extra_terms) -> Inverter
ATTACKS = {"gmi": build_gmi, "kedmi": build_kedmi, "plg": build_plg}

__all__ = [
  "ATTACKS",
  "AttackModels",
  "DistributionalLatent",
  "ExecutionConfig",
  "FeatureRegTerm",
  "Forward",
  "IdentityTerm",
  "InversionConfig",
  "InversionResult",
  "Inverter",
  "Latent",
  "LossTerm",
  "Objective",
  "PointLatent",
  "PriorTerm",
  "RunStats",
  "build_gmi",
  "build_kedmi",
  "build_plg",
  "lomma_terms",
  "max_margin",
  "public_feature_reg",
]
