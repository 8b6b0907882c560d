"""DP-SGD on the AT&T faces target: per-example clipping (C = 1) and Gaussian noise (sigma = 1.0).

  bin/jaxmi defend --config configs/defense_dp_sgd_att.py
  bin/jaxmi attack --config configs/attack_gmi_att.py target=runs/defense_dp_sgd_att workdir=runs/attack_gmi_att_dp_sgd inversion.steps=300 inversion.restarts=2

BatchNorm mixes examples, so this target uses GroupNorm (model.norm=group); the summary reports the
epsilon at delta = 1e-5 from the RDP accountant (the reference's sigma = 0.01 gives epsilon in the millions).
"""

from dataclasses import replace

from jaxmi.defenses import DPSGD
from jaxmi.defenses.run import DefendConfig
from att_target import get_config as att_target


def get_config() -> DefendConfig:
  target = att_target()
  return DefendConfig(target=replace(target, name="defense_dp_sgd_att", workdir="runs/defense_dp_sgd_att",
                                     model=replace(target.model, norm="group")),
                      defense=DPSGD(l2_clip=1.0, noise_multiplier=1.0, delta=1e-5))
