"""KEDMI's inversion-specific GAN for MNIST, on the PUBLIC digits 5-9 labelled by the target.

The discriminator predicts the target's 5 classes (soft labels from runs/mnist_target on
public images) and realness as sigmoid(logsumexp of its logits); the generator matches the
discriminator's features of real public images and lowers the entropy of its class
predictions (weight 1e-4). Same generator and widths as configs/gan_mnist.py.

  bin/jaxmi train-gan --kind kedmi --config configs/gan_kedmi_mnist.py
"""

import dataclasses

from jaxmi.train.gan import GANExperimentConfig

from gan_mnist import get_config as gmi_gan  # noqa: E402


def get_config() -> GANExperimentConfig:
  gmi = gmi_gan()
  return dataclasses.replace(
      gmi, name="gan_kedmi_mnist", kind="kedmi", workdir="runs/gan_kedmi_mnist", target="runs/mnist_target",
      # KEDMI: Adam 2e-4 (0.5, 0.999), batch 64, 5 discriminator steps per generator step, entropy 1e-4.
      train=dataclasses.replace(gmi.train, entropy_weight=1e-4))
