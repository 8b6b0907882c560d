"""Negative label smoothing on the MNIST target (Struppek et al.): alpha = -0.05 with its schedule.

  bin/jaxmi defend --config configs/defense_nls_mnist.py
  bin/jaxmi attack --config configs/attack_gmi_mnist.py target=runs/defense_nls_mnist workdir=runs/attack_gmi_mnist_nls

alpha ramps from 0 to -0.05 as in the reference schedule (defenses.md section 4.2).
"""

from dataclasses import replace

from jaxmi.defenses import NegativeLabelSmoothing
from jaxmi.defenses.run import DefendConfig
from mnist_target import get_config as mnist_target


def get_config() -> DefendConfig:
  target = mnist_target()
  return DefendConfig(target=replace(target, name="defense_nls_mnist", workdir="runs/defense_nls_mnist"),
                      defense=NegativeLabelSmoothing(alpha=-0.05))
