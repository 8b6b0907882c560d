"""The independent classifier behind TCA for GNIME on MNIST: a ResNet, other seed, same defender half.

  bin/jaxmi train-classifier --config configs/gnime_eval_mnist.py
"""

from jaxmi.nets import ModelConfig
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig

from gnime_target_mnist import MNIST_HALVES  # noqa: E402


def get_config() -> ClassifierConfig:
  return ClassifierConfig(
      name="gnime_eval_mnist",
      role="evaluation",
      workdir="runs/gnime_eval_mnist",
      data=MNIST_HALVES,
      model=ModelConfig(arch="resnet", width=16, blocks=(1, 1, 1)),
      optim=OptimConfig(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine"),
      train=TrainConfig(epochs=5, batch_size=64, seed=1, log_every=50, checkpoint_every=200),
  )
