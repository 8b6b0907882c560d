"""AT&T faces evaluation model: a ResNet (not the target's VGG) on the same private identities 1-20.

  bin/jaxmi train-classifier --config configs/att_eval.py
"""

from jaxmi.nets import ModelConfig
from jaxmi.train import AugmentConfig, ClassifierConfig, OptimConfig, TrainConfig

from att_target import ATT_FACES  # noqa: E402


def get_config() -> ClassifierConfig:
  return ClassifierConfig(
      name="att_eval",
      role="evaluation",
      workdir="runs/att_eval",
      data=ATT_FACES,
      model=ModelConfig(arch="resnet", width=16, blocks=(1, 1, 1, 1)),
      optim=OptimConfig(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                        warmup_epochs=2),
      train=TrainConfig(epochs=60, batch_size=32, eval_batch_size=64, seed=1, log_every=20, checkpoint_every=100,
                        augment=AugmentConfig(hflip=True, max_shift=4)),
  )
