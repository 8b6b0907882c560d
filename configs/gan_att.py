"""GMI GAN prior for AT&T faces: WGAN-GP at 64x64 grey on the PUBLIC identities s21-s40 only.

The 64-px generator of the reference (four upsampling stages) with a quarter of its widths:
200 public faces cannot support the full 64-base-width GAN, and it keeps CPU training short.

  bin/jaxmi train-gan --config configs/gan_att.py
"""

from jaxmi.nets.gan import GANConfig
from jaxmi.train.gan import GANExperimentConfig, GANTrainConfig

from att_target import ATT_FACES  # noqa: E402


def get_config() -> GANExperimentConfig:
  return GANExperimentConfig(
      name="gan_att",
      kind="gmi",
      workdir="runs/gan_att",
      data=ATT_FACES,
      gan=GANConfig(z_dim=100, base_width=16, stages=4, channels=1),
      # 200 images: small batches and many epochs give ~500 generator steps.
      train=GANTrainConfig(epochs=250, batch_size=20, n_critic=5, gp_weight=10.0, learning_rate=2e-4,
                           checkpoint_every=100),
  )
