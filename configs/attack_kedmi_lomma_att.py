"""KEDMI + LOMMA on the AT&T faces target: logit loss, feature regulariser, a distilled surrogate, z clamped.

  bin/jaxmi attack --config configs/attack_kedmi_lomma_att.py
"""

import dataclasses

from attack_kedmi_att import get_config as kedmi_config  # noqa: E402


def get_config():
  kedmi = kedmi_config()
  return dataclasses.replace(
      kedmi, name="kedmi_lomma_att", workdir="runs/attack_kedmi_lomma_att", surrogates=("runs/surrogate_att_cnn",),
      inversion=dataclasses.replace(kedmi.inversion, identity_loss="logit", feature_reg_weight=100.0, p_reg="global",
                                    clip_z=1.0))
