"""BiDO-COCO on the AT&T faces target: the same objective with the COCO dependence measure.

  bin/jaxmi defend --config configs/defense_bido_coco_att.py
  bin/jaxmi attack --config configs/attack_gmi_att.py target=runs/defense_bido_coco_att workdir=runs/attack_gmi_att_bido_coco inversion.steps=300 inversion.restarts=2

The official script never passes its COCO flag (its 'COCO' runs trained HSIC); this one does.
COCO values are much smaller than nHSIC's, hence larger weights (defenses.md 1.4).
"""

from dataclasses import replace

from jaxmi.defenses import BiDO
from jaxmi.defenses.run import DefendConfig
from att_target import get_config as att_target


# (lambda_x, lambda_y): the CALoR authors' BiDO baseline (0.5, 5) for face VGG-scale targets.
COCO_WEIGHTS = (0.5, 5.0)


def get_config() -> DefendConfig:
  target = att_target()
  return DefendConfig(target=replace(target, name="defense_bido_coco_att", workdir="runs/defense_bido_coco_att"),
                      defense=BiDO(measure="coco", lambda_x=COCO_WEIGHTS[0], lambda_y=COCO_WEIGHTS[1], sigma=5.0))
