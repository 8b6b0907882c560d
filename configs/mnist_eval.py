"""MNIST evaluation model: a ResNet (a different architecture from the target) on the same private digits.

It never sees an attack; it judges whether a reconstruction shows the attacked identity.

  bin/jaxmi train-classifier --config configs/mnist_eval.py

Expected: >= 99% top-1 on the private test digits.
"""

from jaxmi.nets import ModelConfig
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig

from mnist_target import MNIST  # noqa: E402  (configs/ is on the path while a config runs)


def get_config() -> ClassifierConfig:
  return ClassifierConfig(
      name="mnist_eval",
      role="evaluation",
      workdir="runs/mnist_eval",
      data=MNIST,
      model=ModelConfig(arch="resnet", width=16, blocks=(1, 1, 1)),
      optim=OptimConfig(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine"),
      # A different seed as well as a different architecture: the two models must be independent.
      train=TrainConfig(epochs=3, batch_size=64, seed=1, log_every=50, checkpoint_every=200),
  )
