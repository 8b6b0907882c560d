"""``bin/jaxmi defend``: train a defended target from ``configs/defense.py:method=...,data=...``.

A defense config names the target recipe (a ``ClassifierConfig``: data, architecture,
optimiser, epochs), the ``Defense`` and, for TL-DMI, a pretraining stage on the PUBLIC split.
Every stage checkpoints and resumes; a finished stage is not retrained.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxmi import config as config_lib
from jaxmi.errors import ConfigError
from jaxmi.train.classifier import ClassifierConfig, train_classifier
from jaxmi.train.step import Defense, NoDefense


@dataclasses.dataclass(frozen=True, kw_only=True)
class DefendConfig:
  target: ClassifierConfig  # the defended target: its workdir receives checkpoints and summary.json
  defense: Defense = NoDefense()  # one of jaxmi.defenses (NoDefense() = no defense)
  # A first stage the defended target starts from: TL-DMI's pretraining on the PUBLIC identities
  # (pretrain_on="public": the head is re-initialised), or CALoR's low-rank model trained with
  # cross-entropy on the private data before confidence adaptation (pretrain_on="private").
  pretrain: ClassifierConfig | None = None
  pretrain_on: str = "public"


def public_pretraining(target: ClassifierConfig, *, name: str, workdir: str, **train_changes) -> ClassifierConfig:
  """The target recipe trained on the PUBLIC identities (TL-DMI's pretraining when no external weights exist)."""
  data = dataclasses.replace(target.data, private_ids=target.data.public_ids, public_ids=())
  cfg = dataclasses.replace(target, name=name, workdir=workdir, data=data, role="target", init_from="")
  return config_lib.replace(cfg, **{f"train__{k}": v for k, v in train_changes.items()})


def defend(cfg: DefendConfig, *, progress: bool = True, allow_config_change: bool = False, log=print) -> dict:
  """Runs the pretraining stage (if any) and trains the defended target; returns its summary."""
  if cfg.target.role != "target":
    raise ConfigError(f"target.role: a defended model is a 'target', got '{cfg.target.role}'")
  target = cfg.target
  warning = cfg.defense.warning(target.train.epochs)
  if warning:
    log(f"[{target.name}] warning: {warning}")
  if cfg.pretrain is not None:
    if Path(cfg.pretrain.workdir).resolve() == Path(target.workdir).resolve():
      raise ConfigError("pretrain.workdir: must differ from target.workdir")
    if cfg.pretrain_on not in ("public", "private"):
      raise ConfigError(f"pretrain_on: expected 'public' or 'private', got '{cfg.pretrain_on}'")
    public = cfg.pretrain_on == "public"
    if (
      public
      and cfg.pretrain.data.dataset == target.data.dataset
      and set(cfg.pretrain.data.private_ids) & set(target.data.private_ids)
    ):
      raise ConfigError(
        "pretrain.data.private_ids: the pretraining identities overlap the target's private "
        "identities; pretrain_on='public' must use public data only"
      )
    log(f"[{cfg.pretrain.name}] first stage on the {cfg.pretrain_on} identities")
    train_classifier(cfg.pretrain, progress=progress, allow_config_change=allow_config_change, log=log)
    target = dataclasses.replace(target, init_from=target.init_from or cfg.pretrain.workdir, init_head=not public)
  return train_classifier(
    target, defense=cfg.defense, progress=progress, allow_config_change=allow_config_change, log=log
  )
