"""GMI + LOMMA on the AT&T faces target: logit loss, feature regulariser and a distilled surrogate.

Needs what configs/attack_gmi_att.py needs, plus runs/surrogate_att_cnn (bin/jaxmi distill).

  bin/jaxmi attack --config configs/attack_gmi_lomma_att.py
"""

import dataclasses

from attack_gmi_att import get_config as gmi_config  # noqa: E402


def get_config():
  gmi = gmi_config()
  return dataclasses.replace(
      gmi, name="gmi_lomma_att", workdir="runs/attack_gmi_lomma_att", surrogates=("runs/surrogate_att_cnn",),
      inversion=dataclasses.replace(gmi.inversion, identity_loss="logit", feature_reg_weight=100.0, p_reg="global"))
