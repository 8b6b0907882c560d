"""GNIME's MNIST setting: a CNN target on all 10 digits, trained on one half of the images.

The other half (same digits, other images) is the attacker's (gnime.md section 5). 600
images per digit are used (300 per half) to keep CPU runs short; data.max_per_class=0 uses all.

  bin/jaxmi train-classifier --config configs/gnime_target_mnist.py
"""

from jaxmi.data import DataConfig
from jaxmi.nets import ModelConfig
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig

MNIST_HALVES = DataConfig(dataset="mnist", image_size=32, channels=1, private_ids=tuple(range(10)), public_ids=(),
                          test_fraction=0.5, max_per_class=600)


def get_config() -> ClassifierConfig:
  return ClassifierConfig(
      name="gnime_target_mnist",
      role="target",
      workdir="runs/gnime_target_mnist",
      data=MNIST_HALVES,
      model=ModelConfig(arch="cnn", width=32, feature_dim=128),
      optim=OptimConfig(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4, schedule="cosine"),
      train=TrainConfig(epochs=5, batch_size=64, log_every=50, checkpoint_every=200),
  )
