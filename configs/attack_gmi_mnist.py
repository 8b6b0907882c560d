"""GMI on the MNIST target: all 5 private digits x 5 restarts in one compiled program.

Needs runs/mnist_target, runs/mnist_eval (train-classifier) and runs/gan_mnist (train-gan).

  bin/jaxmi attack --config configs/attack_gmi_mnist.py
"""

from jaxmi.attacks import InversionConfig
from jaxmi.attacks.run import AttackConfig


def get_config() -> AttackConfig:
  return AttackConfig(
      name="gmi_mnist",
      attack="gmi",
      workdir="runs/attack_gmi_mnist",
      target="runs/mnist_target",
      evaluator="runs/mnist_eval",
      gan="runs/gan_mnist",
      # GMI's MNIST variant uses lr 1e-2 and 1500 steps (attacks.md section 2).
      inversion=InversionConfig(steps=1500, restarts=5, optimizer="nesterov", learning_rate=0.01, momentum=0.9,
                                clip_z=1.0, prior_weight=1.0, identity_weight=100.0, reference_batch=60),
  )
