"""TL-DMI on the MNIST target: pretrain on the PUBLIC identities, freeze the first 2 layers, fine-tune the rest.

  bin/jaxmi defend --config configs/defense_tl_dmi_mnist.py
  bin/jaxmi attack --config configs/attack_gmi_mnist.py target=runs/defense_tl_dmi_mnist workdir=runs/attack_gmi_mnist_tl_dmi

The CNN has 3 layers before its head (conv0, conv1, fc_feat); freezing 2 of 3 mirrors the reference's
8 of 13 VGG16 convs at this depth: only fc_feat and the new head see private digits.
Frozen layers run in inference mode, so their BatchNorm statistics stay the public ones.
"""

from dataclasses import replace

from jaxmi.defenses import TransferLearning
from jaxmi.defenses.run import DefendConfig, public_pretraining
from mnist_target import get_config as mnist_target


def get_config() -> DefendConfig:
  target = mnist_target()
  pretrain = public_pretraining(target, name="defense_tl_dmi_mnist_public", workdir="runs/defense_tl_dmi_mnist_public")
  return DefendConfig(target=replace(target, name="defense_tl_dmi_mnist", workdir="runs/defense_tl_dmi_mnist"),
                      pretrain=pretrain, pretrain_on="public", defense=TransferLearning(frozen_layers=2))
