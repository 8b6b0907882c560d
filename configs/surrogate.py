"""LOMMA's model augmentation: a surrogate distilled from the target on its PUBLIC split, never the private one.

  bin/jaxmi distill --config configs/surrogate.py:data=mnist --workdir runs/surrogate_mnist_vgg

(the attack recipe reads runs/surrogate_mnist_vgg or runs/surrogate_att_cnn by default)

The surrogate is of another family than the target and the evaluation model (ResNet), as LOMMA uses
EfficientNets against VGG/IR152 targets. LOMMA's recipe is SGD 0.01, momentum 0.9, wd 1e-4 for 20 epochs over
30,000 images.
data=mnist: a small VGG distilled from the CNN target on digits 5-9; 5 epochs at lr 0.05 suffice. Measured
  (small test setting: 1000 images/digit, 5 epochs): 89% top-1 agreement with the target on held-out public digits.
data=att: a CNN distilled from the VGG16 target on the 200 public faces (s21-s40); 180 training images need many
  more epochs than LOMMA's 20.
"""

import typing
from pathlib import Path

from jaxmi import config as config_lib
from jaxmi.nets import ModelConfig
from jaxmi.train import AugmentConfig, ClassifierConfig, OptimConfig, TrainConfig
from jaxmi.train.distill import SurrogateConfig

# The argument after "surrogate.py:", with its choices.
ARGS = {"data": typing.Literal["mnist", "att"]}

# data -> (name, model, optimiser, training)
STUDENT = {
  "mnist": (
    "surrogate_mnist_vgg",
    ModelConfig(arch="vgg", vgg_layout="vgg_small", width_divisor=4),
    OptimConfig(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=1e-4, schedule="cosine"),
    TrainConfig(epochs=5, batch_size=64, seed=2),
  ),
  "att": (
    "surrogate_att_cnn",
    ModelConfig(arch="cnn", width=16, feature_dim=128),
    OptimConfig(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4, schedule="cosine", warmup_epochs=2),
    TrainConfig(
      epochs=100,
      batch_size=20,
      eval_batch_size=64,
      seed=2,
      log_every=20,
      checkpoint_every=200,
      augment=AugmentConfig(hflip=True, max_shift=4),
    ),
  ),
}


def get_config(arg: str | None = None) -> SurrogateConfig:
  data = config_lib.parse_arg(arg, **ARGS)["data"]
  target = config_lib.load_config(f"{Path(__file__).with_name('classifier.py')}:role=target,data={data}")
  name, model, optim, train = STUDENT[data]
  return SurrogateConfig(
    teacher=f"runs/{target.name}",
    temperature=1.0,
    holdout_fraction=0.1,
    student=ClassifierConfig(name=name, role="surrogate", data=target.data, model=model, optim=optim, train=train),
  )
