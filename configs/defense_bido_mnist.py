"""BiDO-HSIC on the MNIST target: CE + 0.05 * sum_j nHSIC(X, Z_j) - 0.5 * sum_j nHSIC(Y, Z_j).

  bin/jaxmi defend --config configs/defense_bido_mnist.py
  bin/jaxmi attack --config configs/attack_gmi_mnist.py target=runs/defense_bido_mnist workdir=runs/attack_gmi_mnist_bido

The reference's (lambda_x, lambda_y) = (0.05, 0.5), Gaussian kernels with sigma 5, a linear kernel on
one-hot labels, over every hidden block output (defenses.md section 1).
"""

from dataclasses import replace

from jaxmi.defenses import BiDO
from jaxmi.defenses.run import DefendConfig
from mnist_target import get_config as mnist_target


def get_config() -> DefendConfig:
  target = mnist_target()
  return DefendConfig(target=replace(target, name="defense_bido_mnist", workdir="runs/defense_bido_mnist"),
                      defense=BiDO(measure="hsic", lambda_x=0.05, lambda_y=0.5, sigma=5.0))
