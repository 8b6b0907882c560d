"""MID on the MNIST target: a variational information bottleneck head, loss CE + beta * KL.

  bin/jaxmi defend --config configs/defense_mid_mnist.py
  bin/jaxmi attack --config configs/attack_gmi_mnist.py target=runs/defense_mid_mnist workdir=runs/attack_gmi_mnist_mid

beta = 0.01 (the reference sweeps beta; larger is more private and less accurate).
"""

from dataclasses import replace

from jaxmi.defenses import MID
from jaxmi.defenses.run import DefendConfig
from mnist_target import get_config as mnist_target


def get_config() -> DefendConfig:
  target = mnist_target()
  return DefendConfig(target=replace(target, name="defense_mid_mnist", workdir="runs/defense_mid_mnist",
                                     model=replace(target.model, head="vib")),
                      defense=MID(beta=0.01))
