"""GMI on the AT&T faces target: all 20 private identities x 5 restarts in one compiled program.

Needs runs/att_target, runs/att_eval (train-classifier) and runs/gan_att (train-gan).

  bin/jaxmi attack --config configs/attack_gmi_att.py
"""

from jaxmi.attacks import InversionConfig
from jaxmi.attacks.run import AttackConfig


def get_config() -> AttackConfig:
  return AttackConfig(
      name="gmi_att",
      attack="gmi",
      workdir="runs/attack_gmi_att",
      target="runs/att_target",
      evaluator="runs/att_eval",
      gan="runs/gan_att",
      # The CelebA protocol's GMI settings (attacks.md section 2).
      inversion=InversionConfig(steps=1500, restarts=5, optimizer="nesterov", learning_rate=0.02, momentum=0.9,
                                clip_z=1.0, prior_weight=1.0, identity_weight=100.0, reference_batch=60),
  )
