"""Model-inversion attacks on a trained target: every private identity x restart in one compiled program.

  bin/jaxmi attack --config configs/attack.py:method=gmi,data=mnist --workdir runs/attack_gmi_mnist

Needs runs/<data>_target, runs/<data>_eval (train-classifier with configs/classifier.py), the GAN prior
(train-gan with configs/gan.py: runs/gan_<data> for GMI, runs/gan_kedmi_<data> for KEDMI) and, for LOMMA, the
surrogate (distill with configs/surrogate.py); PLG-MI its conditional GAN (runs/gan_plg_<data>).

method=gmi: GMI, the CelebA protocol's settings (Zhang et al., CVPR 2020): 5 restarts x 1500 Nesterov steps;
  GMI's MNIST variant uses lr 1e-2.
method=kedmi: KEDMI's recovery, one learned latent distribution per private identity (Chen et al., ICCV 2021):
  mu = 0, logvar = 1, Adam 0.02, 2400 steps, z not clipped, 5 draws per identity evaluated. Adam is nearly
  scale-invariant, so reference_batch (the batch-mean gradient scale) hardly matters here.
method=plg: PLG-MI's reconstruction (Yuan et al., AAAI 2023) through the conditional GAN trained on the target's
  pseudo-labelled public data (train-gan with configs/gan.py:kind=plg -> runs/gan_plg_<data>): z only (never
  clipped), each latent's class fixed, max-margin loss on two augmented views, no prior term, Adam 0.1, 600 steps,
  5 restarts (the reference's 5 seeds).
method=gmi_lomma | kedmi_lomma: + LOMMA (Nguyen et al., CVPR 2023): logit loss, feature regulariser and a distilled
  surrogate; total = prior + 100 * (logit loss + lam * feature regulariser), lam = 1.
"""

import dataclasses
import typing

from jaxmi import config as config_lib
from jaxmi.attacks import InversionConfig
from jaxmi.augment import PLG_AUGMENT
from jaxmi.experiments.attack import AttackConfig

# The arguments after "attack.py:", with their choices.
ARGS = {
  "method": typing.Literal["gmi", "gmi_lomma", "kedmi", "kedmi_lomma", "plg"],
  "data": typing.Literal["mnist", "att"],
}

# method -> (attack, with LOMMA)
METHODS = {
  "gmi": ("gmi", False),
  "gmi_lomma": ("gmi", True),
  "kedmi": ("kedmi", False),
  "kedmi_lomma": ("kedmi", True),
  "plg": ("plg", False),
}
INVERSION = {
  "gmi": InversionConfig(
    steps=1500,
    restarts=5,
    optimizer="nesterov",
    momentum=0.9,
    z_clip=1.0,
    prior_weight=1.0,
    identity_weight=100.0,
    reference_batch=60,
  ),
  "kedmi": InversionConfig(
    steps=2400,
    restarts=1,
    optimizer="adam",
    draw_clamp=0.0,
    init_logvar=1.0,
    eval_draws=5,
    prior_weight=1.0,
    identity_weight=100.0,
    reference_batch=60,
  ),
  # reconstruct.py: Adam 0.1, 600 iterations, 5 seeds; the loss is the batch mean over 60 identities.
  "plg": InversionConfig(
    steps=600,
    restarts=5,
    optimizer="adam",
    z_clip=0.0,
    prior_weight=0.0,
    identity_weight=1.0,
    identity_loss="max_margin",
    augment_views=2,
    augment=PLG_AUGMENT,
    reference_batch=60,
  ),
}
LEARNING_RATE = {
  ("gmi", "mnist"): 0.01,
  ("gmi", "att"): 0.02,
  ("kedmi", "mnist"): 0.02,
  ("kedmi", "att"): 0.02,
  ("plg", "mnist"): 0.1,
  ("plg", "att"): 0.1,
}
GAN = {"gmi": "runs/gan_{data}", "kedmi": "runs/gan_kedmi_{data}", "plg": "runs/gan_plg_{data}"}
SURROGATE = {"mnist": "runs/surrogate_mnist_vgg", "att": "runs/surrogate_att_cnn"}
# LOMMA clamps z to [-1, 1] before the generator on both paths (Nguyen et al.'s code, CVPR 2023); GMI clamps anyway. On
# KEDMI the clamp makes the draws collapse to one image (jaxmi.attacks.kedmi); draw_clamp=0 keeps them diverse.
LOMMA = dict(identity_loss="logit", feature_reg_weight=100.0, p_reg="global")
LOMMA_CLAMP = {"gmi": dict(z_clip=1.0), "kedmi": dict(draw_clamp=1.0)}  # GMI clips z after each step; KEDMI each draw


def get_config(arg: str | None = None) -> AttackConfig:
  arg = config_lib.parse_arg(arg, **ARGS)
  method, data = arg["method"], arg["data"]
  attack, lomma = METHODS[method]
  inversion = dataclasses.replace(INVERSION[attack], learning_rate=LEARNING_RATE[attack, data])
  return AttackConfig(
    name=f"{method}_{data}",
    attack=attack,
    target=f"runs/{data}_target",
    evaluator=f"runs/{data}_eval",
    gan=GAN[attack].format(data=data),
    surrogates=(SURROGATE[data],) if lomma else (),
    inversion=dataclasses.replace(inversion, **LOMMA, **LOMMA_CLAMP[attack]) if lomma else inversion,
  )
