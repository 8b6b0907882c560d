"""Model-inversion attacks on top of one batched inversion engine."""

from jaxmi.attacks.engine import (AttackModels, FeatureRegTerm, Forward, IdentityTerm, InversionConfig, InversionResult, Inverter,
                                  PointLatent, PriorTerm, resize_to)
from jaxmi.attacks.gmi import build_gmi

# name -> builder(models, z_dim, InversionConfig) -> Inverter
ATTACKS = {"gmi": build_gmi}

__all__ = [
    "ATTACKS", "AttackModels", "FeatureRegTerm", "Forward", "IdentityTerm", "InversionConfig", "InversionResult", "Inverter",
    "PointLatent", "PriorTerm", "build_gmi", "resize_to",
]
