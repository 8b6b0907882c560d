"""Classifiers: the attacked target and the independent evaluation model, in the MI protocol or GNIME's.

  bin/jaxmi train-classifier --config configs/classifier.py:role=target,data=mnist --workdir runs/mnist_target

The other recipes read these models from runs/<name> by default (name: <data>_target, <data>_eval,
gnime_target_<data>, gnime_eval_<data>); a model trained elsewhere is named with target=..., evaluator=....

role=target | eval: the MI protocol. The private identities are the target's and the evaluation model's; the
  public ones are the attacker's (MNIST: digits 0-4 private, 5-9 public; AT&T: s1-s20 private, 8 training and
  2 test images each in a seeded split, s21-s40 public).
role=gnime_target | gnime_eval: GNIME's protocol (Jeong et al., NeurIPS 2022). Every identity is private; each one's
  images are split in halves, the defender's (these models') and the attacker's.
data=mnist: 32x32, a small CNN target. Expected: >= 99% top-1 on the private test digits (official MNIST test
  images) for both models.
data=att: AT&T faces at 64x64 grey, a VGG16-BN target with channel widths / 4, the standard MI target.

The evaluation model never sees an attack; it judges whether a reconstruction shows the attacked identity, so
it differs from the target in architecture (a ResNet) and in seed: the two models must be independent.
"""

import dataclasses
import typing

from jaxmi import config as config_lib
from jaxmi.data import DataConfig
from jaxmi.nets import ModelConfig
from jaxmi.train import AugmentConfig, ClassifierConfig, OptimConfig, TrainConfig

# The arguments after "classifier.py:", with their choices.
ARGS = {"role": typing.Literal["target", "eval", "gnime_target", "gnime_eval"], "data": typing.Literal["mnist", "att"]}

# role -> (protocol, the model's role, its name)
ROLES = {
  "target": ("mi", "target", "{data}_target"),
  "eval": ("mi", "evaluation", "{data}_eval"),
  "gnime_target": ("gnime", "target", "gnime_target_{data}"),
  "gnime_eval": ("gnime", "evaluation", "gnime_eval_{data}"),
}

# The splits, by (protocol, data). GNIME on MNIST uses 600 images per digit (300 per half) to keep CPU runs
# short; data.max_per_class=0 uses all.
DATA = {
  ("mi", "mnist"): DataConfig(
    dataset="mnist", image_size=32, channels=1, private_ids=(0, 1, 2, 3, 4), public_ids=(5, 6, 7, 8, 9)
  ),
  ("mi", "att"): DataConfig(
    dataset="att_faces",
    image_size=64,
    channels=1,
    private_ids=tuple(range(0, 20)),
    public_ids=tuple(range(20, 40)),
    test_fraction=0.2,
    split_seed=0,
  ),
  ("gnime", "mnist"): DataConfig(
    dataset="mnist",
    image_size=32,
    channels=1,
    private_ids=tuple(range(10)),
    public_ids=(),
    test_fraction=0.5,
    max_per_class=600,
  ),
  ("gnime", "att"): DataConfig(
    dataset="att_faces",
    image_size=64,
    channels=1,
    private_ids=tuple(range(40)),
    public_ids=(),
    test_fraction=0.5,
    split_seed=0,
  ),
}
EPOCHS = {("mi", "mnist"): 3, ("mi", "att"): 60, ("gnime", "mnist"): 5, ("gnime", "att"): 60}

# The networks, by (model role, data).
MODEL = {
  ("target", "mnist"): ModelConfig(arch="cnn", width=32, feature_dim=128),
  ("target", "att"): ModelConfig(arch="vgg", vgg_layout="vgg16", width_divisor=4),
  ("evaluation", "mnist"): ModelConfig(arch="resnet", width=16, blocks=(1, 1, 1)),
  ("evaluation", "att"): ModelConfig(arch="resnet", width=16, blocks=(1, 1, 1, 1)),
}

# (learning rate, weight decay, seed) by model role. The target's is the MI reference recipe (classify.json):
# SGD, momentum 0.9, wd 1e-4, lr 1e-2, batch 64.
OPTIM_SEED = {"target": (0.01, 1e-4, 0), "evaluation": (0.05, 5e-4, 1)}
WARMUP = {"mnist": {}, "att": {"warmup_epochs": 2}}

# AT&T has 160 training images: many short epochs, flips and small shifts as the face pipelines use.
TRAIN = {
  "mnist": TrainConfig(batch_size=64, log_every=50, checkpoint_every=200),
  "att": TrainConfig(
    batch_size=32,
    eval_batch_size=64,
    log_every=20,
    checkpoint_every=100,
    augment=AugmentConfig(hflip=True, max_shift=4),
  ),
}


def get_config(arg: str | None = None) -> ClassifierConfig:
  arg = config_lib.parse_arg(arg, **ARGS)
  data = arg["data"]
  protocol, role, name = ROLES[arg["role"]]
  name = name.format(data=data)
  lr, wd, seed = OPTIM_SEED[role]
  return ClassifierConfig(
    name=name,
    role=role,
    data=DATA[protocol, data],
    model=MODEL[role, data],
    optim=OptimConfig(name="sgd", learning_rate=lr, momentum=0.9, weight_decay=wd, schedule="cosine", **WARMUP[data]),
    train=dataclasses.replace(TRAIN[data], epochs=EPOCHS[protocol, data], seed=seed),
  )
