"""CALoR on the MNIST target: low-rank head (r = 40, tanh) + confidence adaptation (gamma 8, alpha 0.25).

  bin/jaxmi defend --config configs/defense_calor_mnist.py
  bin/jaxmi attack --config configs/attack_gmi_mnist.py target=runs/defense_calor_mnist workdir=runs/attack_gmi_mnist_calor

Two stages, as the reference: the low-rank model trained with cross-entropy, then fine-tuned with the
inverse focal loss with the reference's recipe (ca_ft.py): SGD lr 2e-5, momentum 0.9, no weight decay,
5 epochs with the lr divided by 10 at epochs 3 and 4.
"""

from dataclasses import replace

from jaxmi.defenses import ConfidenceAdaptation
from jaxmi.defenses.run import DefendConfig
from mnist_target import get_config as mnist_target


def get_config() -> DefendConfig:
  target = mnist_target()
  low_rank = replace(target, name="defense_calor_mnist_lowrank", workdir="runs/defense_calor_mnist_lowrank",
                     model=replace(target.model, head="low_rank", head_rank=40, head_activation="tanh"))
  finetune = replace(low_rank, name="defense_calor_mnist", workdir="runs/defense_calor_mnist",
                     optim=replace(target.optim, learning_rate=2e-5, momentum=0.9, weight_decay=0.0, schedule="step",
                                   decay_epochs=(3, 4), decay_factor=0.1, warmup_epochs=0),
                     train=replace(target.train, epochs=5))
  return DefendConfig(target=finetune, pretrain=low_rank, pretrain_on="private",
                      defense=ConfidenceAdaptation(gamma=8.0, alpha=0.25))
