"""The independent classifier behind TCA for GNIME on AT&T: a ResNet, other seed, same defender half.

  bin/jaxmi train-classifier --config configs/gnime_eval_att.py
"""

from jaxmi.nets import ModelConfig
from jaxmi.train import AugmentConfig, ClassifierConfig, OptimConfig, TrainConfig

from gnime_target_att import ATT_HALVES  # noqa: E402


def get_config() -> ClassifierConfig:
  return ClassifierConfig(
      name="gnime_eval_att",
      role="evaluation",
      workdir="runs/gnime_eval_att",
      data=ATT_HALVES,
      model=ModelConfig(arch="resnet", width=16, blocks=(1, 1, 1, 1)),
      optim=OptimConfig(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                        warmup_epochs=2),
      train=TrainConfig(epochs=60, batch_size=32, eval_batch_size=64, seed=1, log_every=20, checkpoint_every=100,
                        augment=AugmentConfig(hflip=True, max_shift=4)),
  )
