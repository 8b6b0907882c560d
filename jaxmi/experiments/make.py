"""One network or attack made from its config through its command's entry point: what ``bin/jaxmi protocol`` and
``bin/jaxmi sweep`` run for each stage (train-classifier, defend, train-gan, distill, attack; each resumes after a
kill from its own checkpoints or attack state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxmi.errors import ConfigError


def make(cfg: Any, workdir: str | Path, *, progress: bool = True) -> None:
  """Trains the classifier, defended target, GAN or surrogate, or runs the attack, that ``cfg`` describes, in
  ``workdir`` (the caller holds its lock)."""
  from jaxmi.experiments.attack import AttackConfig, run_attack
  from jaxmi.experiments.defend import DefendConfig, defend
  from jaxmi.train import ClassifierConfig, train_classifier
  from jaxmi.train.distill import SurrogateConfig, distill_surrogate
  from jaxmi.train.gan import GANExperimentConfig, train_gan

  if isinstance(cfg, ClassifierConfig):
    train_classifier(cfg, workdir, progress=progress)
  elif isinstance(cfg, DefendConfig):
    defend(cfg, workdir, progress=progress)
  elif isinstance(cfg, GANExperimentConfig):
    train_gan(cfg, workdir, progress=progress)
  elif isinstance(cfg, SurrogateConfig):
    distill_surrogate(
      cfg.student,
      workdir,
      cfg.teacher,
      temperature=cfg.temperature,
      holdout_fraction=cfg.holdout_fraction,
      progress=progress,
    )
  elif isinstance(cfg, AttackConfig):
    run_attack(cfg, workdir, progress=progress)
  else:
    raise ConfigError(
      f"recipe: a {type(cfg).__name__}; expected a classifier, defense, GAN, surrogate or attack config"
    )
