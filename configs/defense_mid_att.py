"""MID on the AT&T faces target: a variational information bottleneck head, loss CE + beta * KL.

  bin/jaxmi defend --config configs/defense_mid_att.py
  bin/jaxmi attack --config configs/attack_gmi_att.py target=runs/defense_mid_att workdir=runs/attack_gmi_att_mid inversion.steps=300 inversion.restarts=2

beta = 0.003 (the reference sweeps beta; larger is more private and less accurate).
"""

from dataclasses import replace

from jaxmi.defenses import MID
from jaxmi.defenses.run import DefendConfig
from att_target import get_config as att_target


def get_config() -> DefendConfig:
  target = att_target()
  return DefendConfig(target=replace(target, name="defense_mid_att", workdir="runs/defense_mid_att",
                                     model=replace(target.model, head="vib")),
                      defense=MID(beta=0.003))
