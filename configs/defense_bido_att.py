"""BiDO-HSIC on the AT&T faces target: CE + 0.05 * sum_j nHSIC(X, Z_j) - 0.5 * sum_j nHSIC(Y, Z_j).

  bin/jaxmi defend --config configs/defense_bido_att.py
  bin/jaxmi attack --config configs/attack_gmi_att.py target=runs/defense_bido_att workdir=runs/attack_gmi_att_bido inversion.steps=300 inversion.restarts=2

The reference's (lambda_x, lambda_y) = (0.05, 0.5), Gaussian kernels with sigma 5, a linear kernel on
one-hot labels, over every hidden block output (defenses.md section 1).
"""

from dataclasses import replace

from jaxmi.defenses import BiDO
from jaxmi.defenses.run import DefendConfig
from att_target import get_config as att_target


def get_config() -> DefendConfig:
  target = att_target()
  return DefendConfig(target=replace(target, name="defense_bido_att", workdir="runs/defense_bido_att"),
                      defense=BiDO(measure="hsic", lambda_x=0.05, lambda_y=0.5, sigma=5.0))
