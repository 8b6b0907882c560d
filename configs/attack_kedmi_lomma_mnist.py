"""KEDMI + LOMMA on the MNIST target: logit loss, feature regulariser, a distilled surrogate, z clamped.

Needs what configs/attack_kedmi_mnist.py needs, plus runs/surrogate_mnist_vgg (bin/jaxmi distill).

  bin/jaxmi attack --config configs/attack_kedmi_lomma_mnist.py
"""

import dataclasses

from attack_kedmi_mnist import get_config as kedmi_config  # noqa: E402


def get_config():
  kedmi = kedmi_config()
  return dataclasses.replace(
      kedmi, name="kedmi_lomma_mnist", workdir="runs/attack_kedmi_lomma_mnist",
      surrogates=("runs/surrogate_mnist_vgg",),
      # LOMMA's KEDMI path clamps z to [-1, 1] before the generator (attacks.md section 4.2).
      # The clamp makes the draws collapse to one image (jaxmi.attacks.kedmi); clip_z=0 keeps them diverse.
      inversion=dataclasses.replace(kedmi.inversion, identity_loss="logit", feature_reg_weight=100.0, p_reg="global",
                                    clip_z=1.0))
