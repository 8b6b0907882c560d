"""GMI + LOMMA on the MNIST target: logit loss, feature regulariser and a distilled surrogate.

Needs what configs/attack_gmi_mnist.py needs, plus runs/surrogate_mnist_vgg (bin/jaxmi distill).

  bin/jaxmi attack --config configs/attack_gmi_lomma_mnist.py
"""

import dataclasses

from attack_gmi_mnist import get_config as gmi_config  # noqa: E402


def get_config():
  gmi = gmi_config()
  return dataclasses.replace(
      gmi, name="gmi_lomma_mnist", workdir="runs/attack_gmi_lomma_mnist",
      surrogates=("runs/surrogate_mnist_vgg",),
      # Total = Prior + 100 * (logit loss + lam * feature regulariser), lam = 1 (attacks.md section 4.1).
      inversion=dataclasses.replace(gmi.inversion, identity_loss="logit", feature_reg_weight=100.0, p_reg="global"))
