"""LOMMA model augmentation for AT&T faces: a CNN surrogate distilled from the VGG16 target on the
200 PUBLIC faces (identities s21-s40), never the private ones.

A different family from the target (VGG16-BN) and from the evaluation model (ResNet), as LOMMA
uses EfficientNets against VGG/IR152 targets.

  bin/jaxmi distill --config configs/surrogate_att.py
"""

from jaxmi.nets import ModelConfig
from jaxmi.train import AugmentConfig, ClassifierConfig, OptimConfig, TrainConfig
from jaxmi.train.distill import SurrogateConfig

from att_target import ATT_FACES  # noqa: E402


def get_config() -> SurrogateConfig:
  return SurrogateConfig(
      teacher="runs/att_target",
      temperature=1.0,
      holdout_fraction=0.1,
      student=ClassifierConfig(
          name="surrogate_att_cnn", role="surrogate", workdir="runs/surrogate_att_cnn", data=ATT_FACES,
          model=ModelConfig(arch="cnn", width=16, feature_dim=128),
          # LOMMA: SGD 0.01, momentum 0.9, wd 1e-4, 20 epochs over 30,000 images; 180 images need many more epochs.
          optim=OptimConfig(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                            warmup_epochs=2),
          train=TrainConfig(epochs=100, batch_size=20, eval_batch_size=64, seed=2, log_every=20, checkpoint_every=200,
                            augment=AugmentConfig(hflip=True, max_shift=4))),
  )
