"""Negative label smoothing on the AT&T faces target (Struppek et al.): alpha = -0.05 with its schedule.

  bin/jaxmi defend --config configs/defense_nls_att.py
  bin/jaxmi attack --config configs/attack_gmi_att.py target=runs/defense_nls_att workdir=runs/attack_gmi_att_nls inversion.steps=300 inversion.restarts=2

alpha ramps from 0 to -0.05 as in the reference schedule (defenses.md section 4.2).
"""

from dataclasses import replace

from jaxmi.defenses import NegativeLabelSmoothing
from jaxmi.defenses.run import DefendConfig
from att_target import get_config as att_target


def get_config() -> DefendConfig:
  target = att_target()
  return DefendConfig(target=replace(target, name="defense_nls_att", workdir="runs/defense_nls_att"),
                      defense=NegativeLabelSmoothing(alpha=-0.05))
