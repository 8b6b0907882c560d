"""GNIME vs the adaptive explanation-inversion attacker: grad explanations of the mnist target.

Needs runs/gnime_target_mnist and runs/gnime_eval_mnist (train-classifier with the gnime_*_mnist configs).

  bin/jaxmi gnime --config configs/gnime_grad_mnist.py

a = 100 as the reference uses for 28-32 px data; epochs are fewer than its 500 (CPU budget),
so both networks use Adam 1e-3 instead of 1e-4 (at 1e-4 and 20 epochs ExpMI stayed below PredMI:
TCA 29.7% vs 41.3% on MNIST gradients; at 1e-3, 73% vs 54%; both measured with the former,
narrower ExpMI/PredMI). width_divisor=4 gives every network a quarter of the reference's channels
in every layer (jaxmi/nets/unet.py matches the reference's layers at 1). A killed run resumes when
the same command is run again (checkpoints every 10 epochs, finished stages kept).
"""

from jaxmi.attacks.expmi import InverterConfig
from jaxmi.defenses.gnime import GNIMEConfig
from jaxmi.defenses.gnime_run import GNIMERunConfig


def get_config() -> GNIMERunConfig:
  return GNIMERunConfig(
      name="gnime_grad_mnist",
      workdir="runs/gnime_grad_mnist",
      target="runs/gnime_target_mnist",
      evaluator="runs/gnime_eval_mnist",
      method="grad",
      gnime=GNIMEConfig(learning_rate=1e-3, a=100.0, epochs=20, batch_size=128, width_divisor=4),
      attacker=InverterConfig(learning_rate=1e-3, epochs=20, batch_size=128, width_divisor=4),
  )
