"""KEDMI on the MNIST target: one learned latent distribution per private digit, 5 draws evaluated.

Needs runs/mnist_target, runs/mnist_eval and runs/gan_kedmi_mnist (train-gan --kind kedmi).

  bin/jaxmi attack --config configs/attack_kedmi_mnist.py
"""

from jaxmi.attacks import InversionConfig
from jaxmi.attacks.run import AttackConfig


def get_config() -> AttackConfig:
  return AttackConfig(
      name="kedmi_mnist",
      attack="kedmi",
      workdir="runs/attack_kedmi_mnist",
      target="runs/mnist_target",
      evaluator="runs/mnist_eval",
      gan="runs/gan_kedmi_mnist",
      # KEDMI's recovery: mu = 0, logvar = 1, Adam 0.02, 2400 steps, z not clipped, 5 draws per identity
      # for evaluation (attacks.md section 3.2). Adam is nearly scale-invariant, so reference_batch
      # (the batch-mean gradient scale) hardly matters here.
      inversion=InversionConfig(steps=2400, restarts=1, optimizer="adam", learning_rate=0.02, clip_z=0.0,
                                init_logvar=1.0, eval_draws=5, prior_weight=1.0, identity_weight=100.0,
                                reference_batch=60),
  )
