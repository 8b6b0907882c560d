"""Sweeps: a defense x setting x attack x seed grid in one resumable command (``bin/jaxmi sweep``).

  bin/jaxmi sweep configs/sweep.py:data=mnist,size=full runs/sweep_mnist --dry-run   # the plan and its time
  bin/jaxmi sweep configs/sweep.py:data=mnist,size=full runs/sweep_mnist             # runs it (rerun to resume)

Every network and attack is made by the ordinary recipes (configs/classifier.py, defense.py, gan.py, surrogate.py,
attack.py) with the overrides below; a defense setting is a dict of the defense's fields, e.g. MID's {"beta": 0.01}.

size=full: the issue-18 grid: no defense, BiDO-HSIC, MID at two betas, NLS and TL-DMI x GMI, KEDMI and GMI+LOMMA x
  seeds 0, 1, 2 with the recipes' own budgets: 6 targets, 6 KEDMI GANs and 6 LOMMA surrogates (one per target), one
  WGAN-GP and 54 attacks (not run end to end here).
size=smoke: no defense and MID (beta 0.01) x GMI x seed 0 on MNIST with 1000 images per digit, two epochs per
  classifier, one of the GAN and a 100-step attack: the whole pipeline in a few minutes (tests/test_sweep.py's slow
  test).
size=tiny: scikit-learn's 8x8 digits (3 private, 3 public classes, 20 images each) and networks of a few hundred
  parameters trained a few steps: what the tests plan and (slow tier) run in a minute or two. The numbers mean nothing.
"""

import typing
from pathlib import Path

from jaxmi import config as config_lib
from jaxmi.experiments.sweep import SweepConfig

# The arguments after "sweep.py:", with their choices.
ARGS = {"data": typing.Literal["mnist", "att"], "size": typing.Literal["full", "smoke", "tiny"]}

# MID's beta: the recipe's (MNIST 0.01, AT&T 0.003) and a stronger one, as the references sweep it.
MID_BETAS = {"mnist": (0.01, 0.1), "att": (0.003, 0.02)}

TINY_NET = ("model.arch=cnn", "model.width=4", "model.feature_dim=8", "train.epochs=1", "train.batch_size=8")


def get_config(arg: str | None = None) -> SweepConfig:
  arg = config_lib.parse_arg(arg, **ARGS)
  data, size = arg["data"], arg["size"]
  recipes = str(Path(__file__).parent)
  if size == "full":
    return SweepConfig(
      name=f"sweep_{data}",
      data=data,
      recipes=recipes,
      defenses={
        "none": ({},),
        "bido": ({},),
        "mid": tuple({"beta": beta} for beta in MID_BETAS[data]),
        "nls": ({},),
        "tl_dmi": ({},),
      },
      attacks=("gmi", "kedmi", "gmi_lomma"),
      seeds=(0, 1, 2),
    )
  if size == "smoke":
    return SweepConfig(
      name=f"sweep_smoke_{data}",
      data=data,
      recipes=recipes,
      defenses={"none": ({},), "mid": ({"beta": MID_BETAS[data][0]},)},
      attacks=("gmi",),
      seeds=(0,),
      data_overrides=("max_per_class=1000",),
      target_overrides=("train.epochs=2",),
      eval_overrides=("train.epochs=2",),
      gan_overrides=("train.epochs=1",),
      surrogate_overrides=("train.epochs=1",),
      attack_overrides=("inversion.steps=100", "inversion.restarts=2"),
    )
  return SweepConfig(
    name=f"sweep_tiny_{data}",
    data=data,
    recipes=recipes,
    defenses={"none": ({},), "mid": ({"beta": 0.01}, {"beta": 0.1})},
    attacks=("gmi", "kedmi"),
    seeds=(0, 1),
    data_overrides=("dataset=sklearn_digits", "private_ids=0,1,2", "public_ids=5,6,7", "max_per_class=20"),
    target_overrides=(*TINY_NET, "optim.learning_rate=0.05", "optim.warmup_epochs=0"),
    eval_overrides=(*TINY_NET, "optim.learning_rate=0.05", "optim.warmup_epochs=0"),
    gan_overrides=("gan.z_dim=16", "gan.base_width=4", "train.epochs=1", "train.batch_size=8"),
    surrogate_overrides=TINY_NET,
    attack_overrides=("inversion.steps=8", "inversion.restarts=2", "execution.log_every=2", "execution.unroll=2"),
  )
