"""KEDMI's inversion-specific GAN for AT&T faces, on the PUBLIC faces s21-s40 labelled by the target.

Same generator and training length as configs/gan_att.py; the discriminator learns the soft
labels that runs/att_target assigns to public faces (20 private classes).

  bin/jaxmi train-gan --kind kedmi --config configs/gan_kedmi_att.py
"""

import dataclasses

from jaxmi.train.gan import GANExperimentConfig

from gan_att import get_config as gmi_gan  # noqa: E402


def get_config() -> GANExperimentConfig:
  return dataclasses.replace(gmi_gan(), name="gan_kedmi_att", kind="kedmi", workdir="runs/gan_kedmi_att",
                             target="runs/att_target")
