"""DP-SGD on the MNIST target: per-example clipping (C = 1) and Gaussian noise (sigma = 1.0).

  bin/jaxmi defend --config configs/defense_dp_sgd_mnist.py
  bin/jaxmi attack --config configs/attack_gmi_mnist.py target=runs/defense_dp_sgd_mnist workdir=runs/attack_gmi_mnist_dp_sgd

BatchNorm mixes examples, so this target uses GroupNorm (model.norm=group); the summary reports the
epsilon at delta = 1e-5 from the RDP accountant (the reference's sigma = 0.01 gives epsilon in the millions).
"""

from dataclasses import replace

from jaxmi.defenses import DPSGD
from jaxmi.defenses.run import DefendConfig
from mnist_target import get_config as mnist_target


def get_config() -> DefendConfig:
  target = mnist_target()
  return DefendConfig(target=replace(target, name="defense_dp_sgd_mnist", workdir="runs/defense_dp_sgd_mnist",
                                     model=replace(target.model, norm="group")),
                      defense=DPSGD(l2_clip=1.0, noise_multiplier=1.0, delta=1e-5))
