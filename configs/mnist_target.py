"""MNIST target: small CNN on the private digits 0-4 (public digits 5-9 are the attacker's).

  bin/jaxmi train-classifier --config configs/mnist_target.py

Expected: >= 99% top-1 on the private test digits (official MNIST test images of 0-4).
"""

from jaxmi.data import DataConfig
from jaxmi.nets import ModelConfig
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig

MNIST = DataConfig(dataset="mnist", image_size=32, channels=1, private_ids=(0, 1, 2, 3, 4), public_ids=(5, 6, 7, 8, 9))


def get_config() -> ClassifierConfig:
  return ClassifierConfig(
      name="mnist_target",
      role="target",
      workdir="runs/mnist_target",
      data=MNIST,
      model=ModelConfig(arch="cnn", width=32, feature_dim=128),
      # The MI reference recipe (classify.json): SGD, momentum 0.9, wd 1e-4, lr 1e-2, batch 64.
      optim=OptimConfig(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4, schedule="cosine"),
      train=TrainConfig(epochs=3, batch_size=64, log_every=50, checkpoint_every=200),
  )
