"""KEDMI on the AT&T faces target: one learned latent distribution per private identity, 5 draws evaluated.

Needs runs/att_target, runs/att_eval and runs/gan_kedmi_att (train-gan --kind kedmi).

  bin/jaxmi attack --config configs/attack_kedmi_att.py
"""

import dataclasses

from jaxmi.attacks.run import AttackConfig

from attack_kedmi_mnist import get_config as kedmi_mnist  # noqa: E402


def get_config() -> AttackConfig:
  return dataclasses.replace(kedmi_mnist(), name="kedmi_att", workdir="runs/attack_kedmi_att",
                             target="runs/att_target", evaluator="runs/att_eval", gan="runs/gan_kedmi_att")
