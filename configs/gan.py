"""GAN priors, trained on the PUBLIC split of the target's data only (the private one is what attacks recover).

  bin/jaxmi train-gan --config configs/gan.py:kind=gmi,data=mnist --workdir runs/gan_mnist

The attack recipe reads the prior from runs/gan_<data> (gmi) or runs/gan_kedmi_<data> (kedmi) by default.

kind=gmi: GMI's WGAN-GP prior.
kind=kedmi: KEDMI's inversion-specific GAN. Its discriminator predicts the target's classes (soft labels from the
  trained target, runs/<data>_target, on public images) and realness as sigmoid(logsumexp of its logits); the
  generator matches the discriminator's features of real public images and lowers the entropy of its class
  predictions (train.entropy_weight, 1e-4 as KEDMI). Same generator and training length as kind=gmi; KEDMI's
  Adam 2e-4 (0.5, 0.999), batch 64, 5 discriminator steps per generator step.
kind=plg: PLG-MI's conditional GAN (ResNet generator with class-conditional BN, SN projection discriminator; hinge
  loss + 0.2 x the target's max-margin loss on augmented fakes; Adam 2e-4 (0.0, 0.9), batch 64, 5 discriminator
  steps per generator step, as the reference) on the public images pseudo-labelled by the trained target
  (runs/<data>_target): the top plg.top_n per class. What the generator hands the target and the discriminator
  (PLG_OUTPUT) is chosen per dataset, by where the untrained generator's output starts against the real images in
  [0, 1]. MNIST: the raw tanh, as the reference (its black digits' background is the untrained tanh's 0;
  plg.output=unit, (tanh + 1) / 2, starts at grey, the discriminator wins within 10 steps and one image per class
  is left). AT&T: unit, the issue's (x + 1) / 2, for the same reason the other way round: faces are mid-grey, and
  with the raw tanh the discriminator's hinge loss reached 0 by step 90 and the generator collapsed to one grey
  square for every class (target accuracy on its samples 5%, chance; runs/tables/gan_plg_att_tanh_collapsed).
  z 128 as the reference; widths nf = 16 (the reference: 64), which keeps a generator step (with its 5
  discriminator steps) at ~1.3 s (MNIST) on a 2-core CPU. MNIST: top 1000 per class (the reference's 30 would
  give 150 images for 5 classes; it selects 30k images from 30-70k public ones), 40 epochs of the pseudo-labelled
  set = 600 generator steps (measured at 150: the target names 46% of the samples as their class; at 600: 93%,
  within-class variety half that of real digits), ~15-25 minutes. AT&T: the reference's top 30 (600 labels over the
  200 public faces), batch 32, 150 epochs = 450 generator steps, ~20 minutes.
data=mnist: 32 px on digits 5-9. The 28-32 px variant of the reference: three upsampling stages (4 -> 32) and a
  quarter of its widths (64 -> 16), which keeps a WGAN-GP step at ~0.4 s on a 2-core CPU.
data=att: 64 px grey on faces s21-s40: the reference's four upsampling stages with a quarter of its widths:
  200 public faces cannot support the full 64-base-width GAN, and it keeps CPU training short.
"""

import typing
from pathlib import Path

from jaxmi import config as config_lib
from jaxmi.nets.gan import GANConfig
from jaxmi.train.gan import GANExperimentConfig, GANTrainConfig, PLGConfig

# The arguments after "gan.py:", with their choices.
ARGS = {"kind": typing.Literal["gmi", "kedmi", "plg"], "data": typing.Literal["mnist", "att"]}

STAGES = {"mnist": 3, "att": 4}
# AT&T's 200 images: small batches and many epochs give ~500 generator steps.
TRAIN = {
  "mnist": GANTrainConfig(epochs=5, batch_size=64, n_critic=5, gp_weight=10.0, learning_rate=2e-4, checkpoint_every=50),
  "att": GANTrainConfig(
    epochs=250, batch_size=20, n_critic=5, gp_weight=10.0, learning_rate=2e-4, checkpoint_every=100
  ),
}

PLG_TRAIN = {
  "mnist": GANTrainConfig(
    epochs=40, batch_size=64, n_critic=5, learning_rate=2e-4, beta1=0.0, beta2=0.9, checkpoint_every=50
  ),
  "att": GANTrainConfig(
    epochs=150, batch_size=32, n_critic=5, learning_rate=2e-4, beta1=0.0, beta2=0.9, checkpoint_every=100
  ),
}
PLG_TOP_N = {"mnist": 1000, "att": 30}
PLG_OUTPUT = {"mnist": "tanh", "att": "unit"}  # see kind=plg above


def get_config(arg: str | None = None) -> GANExperimentConfig:
  arg = config_lib.parse_arg(arg, **ARGS)
  kind, data = arg["kind"], arg["data"]
  target = config_lib.load_config(f"{Path(__file__).with_name('classifier.py')}:role=target,data={data}")
  name = f"gan_{data}" if kind == "gmi" else f"gan_{kind}_{data}"
  if kind == "plg":
    return GANExperimentConfig(
      name=name,
      kind=kind,
      target=f"runs/{target.name}",
      data=target.data,
      gan=GANConfig(z_dim=128, base_width=16, stages=STAGES[data], channels=1, upsample="bilinear"),
      train=PLG_TRAIN[data],
      plg=PLGConfig(top_n=PLG_TOP_N[data], output=PLG_OUTPUT[data]),
    )
  return GANExperimentConfig(
    name=name,
    kind=kind,
    target=f"runs/{target.name}" if kind == "kedmi" else "",
    data=target.data,
    gan=GANConfig(z_dim=100, base_width=16, stages=STAGES[data], channels=1),
    train=TRAIN[data],
  )
