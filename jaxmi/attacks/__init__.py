"""Model-inversion attacks on top of one batched inversion engine."""

from jaxmi.attacks.engine import (AttackModels, DistributionalLatent, FeatureRegTerm, Forward, IdentityTerm, InversionConfig,
                                  InversionResult, Inverter, PointLatent, PriorTerm, resize_to)
from jaxmi.attacks.gmi import build_gmi
from jaxmi.attacks.kedmi import build_kedmi

# name -> builder(models, z_dim, InversionConfig) -> Inverter
ATTACKS = {"gmi": build_gmi, "kedmi": build_kedmi}

__all__ = [
    "ATTACKS", "AttackModels", "DistributionalLatent", "FeatureRegTerm", "Forward", "IdentityTerm", "InversionConfig",
    "InversionResult", "Inverter", "PointLatent", "PriorTerm", "build_gmi", "build_kedmi", "resize_to",
]
