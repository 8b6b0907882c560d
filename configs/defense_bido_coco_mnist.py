"""BiDO-COCO on the MNIST target: the same objective with the COCO dependence measure.

  bin/jaxmi defend --config configs/defense_bido_coco_mnist.py
  bin/jaxmi attack --config configs/attack_gmi_mnist.py target=runs/defense_bido_coco_mnist workdir=runs/attack_gmi_mnist_bido_coco

The official script never passes its COCO flag (its 'COCO' runs trained HSIC); this one does.
COCO values are much smaller than nHSIC's, hence larger weights (defenses.md 1.4).
"""

from dataclasses import replace

from jaxmi.defenses import BiDO
from jaxmi.defenses.run import DefendConfig
from mnist_target import get_config as mnist_target


# (lambda_x, lambda_y): the reference's MNIST code (DMI/recovery.py) runs (2, 20).
COCO_WEIGHTS = (2.0, 20.0)


def get_config() -> DefendConfig:
  target = mnist_target()
  return DefendConfig(target=replace(target, name="defense_bido_coco_mnist", workdir="runs/defense_bido_coco_mnist"),
                      defense=BiDO(measure="coco", lambda_x=COCO_WEIGHTS[0], lambda_y=COCO_WEIGHTS[1], sigma=5.0))
