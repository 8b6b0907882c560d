"""GNIME vs the adaptive explanation-inversion attacker: gradcam explanations of the mnist target.

Needs runs/gnime_target_mnist and runs/gnime_eval_mnist (train-classifier with the gnime_*_mnist configs).

  bin/jaxmi gnime --config configs/gnime_gradcam_mnist.py

a = 100 as the reference uses for 28-32 px data; epochs are fewer than its 500 (CPU budget).
"""

from jaxmi.attacks.expmi import InverterConfig
from jaxmi.defenses.gnime import GNIMEConfig
from jaxmi.defenses.gnime_run import GNIMERunConfig


def get_config() -> GNIMERunConfig:
  return GNIMERunConfig(
      name="gnime_gradcam_mnist",
      workdir="runs/gnime_gradcam_mnist",
      target="runs/gnime_target_mnist",
      evaluator="runs/gnime_eval_mnist",
      method="gradcam",
      gnime=GNIMEConfig(a=100.0, epochs=20, batch_size=128, width_divisor=4),
      attacker=InverterConfig(epochs=20, batch_size=128, width_divisor=4),
  )
