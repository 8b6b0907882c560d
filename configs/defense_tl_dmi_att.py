"""TL-DMI on the AT&T faces target: pretrain on the PUBLIC identities, freeze the first 8 layers, fine-tune the rest.

  bin/jaxmi defend --config configs/defense_tl_dmi_att.py
  bin/jaxmi attack --config configs/attack_gmi_att.py target=runs/defense_tl_dmi_att workdir=runs/attack_gmi_att_tl_dmi inversion.steps=300 inversion.restarts=2

VGG16-BN: the reference's freeze_layers=26 freezes conv1_1..conv4_1, i.e. 8 of 13 convs (defenses.md 2.1).
Frozen layers run in inference mode, so their BatchNorm statistics stay the public ones.
"""

from dataclasses import replace

from jaxmi.defenses import TransferLearning
from jaxmi.defenses.run import DefendConfig, public_pretraining
from att_target import get_config as att_target


def get_config() -> DefendConfig:
  target = att_target()
  pretrain = public_pretraining(target, name="defense_tl_dmi_att_public", workdir="runs/defense_tl_dmi_att_public")
  return DefendConfig(target=replace(target, name="defense_tl_dmi_att", workdir="runs/defense_tl_dmi_att"),
                      pretrain=pretrain, pretrain_on="public", defense=TransferLearning(frozen_layers=8))
