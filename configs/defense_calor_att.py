"""CALoR on the AT&T faces target: low-rank head (r = 40, tanh) + confidence adaptation (gamma 8, alpha 0.25).

  bin/jaxmi defend --config configs/defense_calor_att.py
  bin/jaxmi attack --config configs/attack_gmi_att.py target=runs/defense_calor_att workdir=runs/attack_gmi_att_calor inversion.steps=300 inversion.restarts=2

Two stages, as the reference: the low-rank model trained with cross-entropy, then fine-tuned with the
inverse focal loss with the reference's recipe (ca_ft.py): SGD lr 2e-5, momentum 0.9, no weight decay,
5 epochs with the lr divided by 10 at epochs 3 and 4, flips only (no shifts).
"""

from dataclasses import replace

from jaxmi.defenses import ConfidenceAdaptation
from jaxmi.defenses.run import DefendConfig
from jaxmi.train import AugmentConfig
from att_target import get_config as att_target


def get_config() -> DefendConfig:
  target = att_target()
  low_rank = replace(target, name="defense_calor_att_lowrank", workdir="runs/defense_calor_att_lowrank",
                     model=replace(target.model, head="low_rank", head_rank=40, head_activation="tanh"))
  finetune = replace(low_rank, name="defense_calor_att", workdir="runs/defense_calor_att",
                     optim=replace(target.optim, learning_rate=2e-5, momentum=0.9, weight_decay=0.0, schedule="step",
                                   decay_epochs=(3, 4), decay_factor=0.1, warmup_epochs=0),
                     train=replace(target.train, epochs=5, augment=AugmentConfig(hflip=True, max_shift=0)))
  return DefendConfig(target=finetune, pretrain=low_rank, pretrain_on="private",
                      defense=ConfidenceAdaptation(gamma=8.0, alpha=0.25))
