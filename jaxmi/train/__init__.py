"""Training: the pure classifier step with its defense hook, optimisers, checkpoints, loops."""

from jaxmi.train.checkpoint import Checkpointer
from jaxmi.train.classifier import (
  Classifier,
  ClassifierConfig,
  TrainConfig,
  evaluate,
  load_classifier,
  train_classifier,
)
from jaxmi.train.optim import OptimConfig, make_optimizer
from jaxmi.train.state import TrainState
from jaxmi.train.step import AugmentConfig, Defense, NoDefense, RunFacts, make_eval_step, make_train_step

__all__ = [
  "AugmentConfig",
  "Checkpointer",
  "Classifier",
  "ClassifierConfig",
  "Defense",
  "NoDefense",
  "OptimConfig",
  "RunFacts",
  "TrainConfig",
  "TrainState",
  "evaluate",
  "load_classifier",
  "make_eval_step",
  "make_optimizer",
  "make_train_step",
  "train_classifier",
]
