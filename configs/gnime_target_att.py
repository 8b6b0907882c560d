"""GNIME's face setting on AT&T: a VGG16-BN/4 target on all 40 identities, 5 of each one's 10 images.

The other 5 images of every identity are the attacker's (gnime.md section 5).

  bin/jaxmi train-classifier --config configs/gnime_target_att.py
"""

from jaxmi.data import DataConfig
from jaxmi.nets import ModelConfig
from jaxmi.train import AugmentConfig, ClassifierConfig, OptimConfig, TrainConfig

ATT_HALVES = DataConfig(dataset="att_faces", image_size=64, channels=1, private_ids=tuple(range(40)), public_ids=(),
                        test_fraction=0.5, split_seed=0)


def get_config() -> ClassifierConfig:
  return ClassifierConfig(
      name="gnime_target_att",
      role="target",
      workdir="runs/gnime_target_att",
      data=ATT_HALVES,
      model=ModelConfig(arch="vgg", vgg_layout="vgg16", width_divisor=4),
      optim=OptimConfig(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                        warmup_epochs=2),
      train=TrainConfig(epochs=60, batch_size=32, eval_batch_size=64, log_every=20, checkpoint_every=100,
                        augment=AugmentConfig(hflip=True, max_shift=4)),
  )
