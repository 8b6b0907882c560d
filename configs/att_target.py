"""AT&T faces target: VGG16-BN (channel widths / 4) on identities 1-20 at 64x64 grey.

Identities s1..s20 are private (8 training + 2 test images each, seeded split); s21..s40
are the attacker's public faces. VGG16-BN is the standard MI target architecture.

  bin/jaxmi train-classifier --config configs/att_target.py
"""

from jaxmi.data import DataConfig
from jaxmi.nets import ModelConfig
from jaxmi.train import AugmentConfig, ClassifierConfig, OptimConfig, TrainConfig

ATT_FACES = DataConfig(dataset="att_faces", image_size=64, channels=1, private_ids=tuple(range(0, 20)),
                       public_ids=tuple(range(20, 40)), test_fraction=0.2, split_seed=0)


def get_config() -> ClassifierConfig:
  return ClassifierConfig(
      name="att_target",
      role="target",
      workdir="runs/att_target",
      data=ATT_FACES,
      model=ModelConfig(arch="vgg", vgg_layout="vgg16", width_divisor=4),
      optim=OptimConfig(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                        warmup_epochs=2),
      # 160 training images: many short epochs, flips and small shifts as the face pipelines use.
      train=TrainConfig(epochs=60, batch_size=32, eval_batch_size=64, log_every=20, checkpoint_every=100,
                        augment=AugmentConfig(hflip=True, max_shift=4)),
  )
