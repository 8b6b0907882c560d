"""``bin/jaxmi defend``: train a defended target from ``configs/defense.py:method=...,data=...``.

A defense config names the target recipe (a ``ClassifierConfig``: data, architecture,
optimiser, epochs), the ``Defense`` and, for TL-DMI and CALoR, a first stage. The defended target
is written to the workdir, a first stage to ``<workdir>/pretrain``. Every stage checkpoints and
resumes; a finished stage is not retrained.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from jaxmi import config as config_lib
from jaxmi.errors import ConfigError
from jaxmi.train.classifier import ClassifierConfig, train_classifier
from jaxmi.train.step import Defense, NoDefense
from jaxmi.workdir import Workdir

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DefendConfig:
  target: ClassifierConfig  # the defended target
  defense: Defense = NoDefense()  # one of jaxmi.defenses (NoDefense() = no defense)
  # A first stage the defended target starts from: TL-DMI's pretraining on the PUBLIC identities
  # (pretrain_on="public": the head is re-initialised), or CALoR's low-rank model trained with
  # cross-entropy on the private data before confidence adaptation (pretrain_on="private"). Written to
  # <workdir>/pretrain.
  pretrain: ClassifierConfig | None = None
  pretrain_on: str = "public"


def public_pretraining(target: ClassifierConfig, *, name: str, **train_changes) -> ClassifierConfig:
  """The target recipe trained on the PUBLIC identities (TL-DMI's pretraining when no external weights exist)."""
  data = dataclasses.replace(target.data, private_ids=target.data.public_ids, public_ids=())
  cfg = dataclasses.replace(target, name=name, data=data, role="target", init_from="")
  return config_lib.replace(cfg, **{f"train__{k}": v for k, v in train_changes.items()})


PRETRAIN_DIR = "pretrain"


def defend(
  cfg: DefendConfig, workdir: str | Path | Workdir, *, progress: bool = True, allow_config_change: bool = False
) -> dict:
  """Runs the first stage (if any) in ``<workdir>/pretrain``, then trains the defended target in ``workdir``.

  Returns the defended target's summary (also its ``summary.json``). The caller holds the workdir's lock.
  """
  if cfg.target.role != "target":
    raise ConfigError(f"target.role: a defended model is a 'target', got '{cfg.target.role}'")
  target = cfg.target
  warning = cfg.defense.warning(target.train.epochs)
  if warning:
    log.warning(f"[{target.name}] warning: {warning}")
  if cfg.pretrain is not None:
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
    pretrain_dir = Path(workdir) / PRETRAIN_DIR
    log.info(f"[{cfg.pretrain.name}] first stage on the {cfg.pretrain_on} identities, in {pretrain_dir}")
    train_classifier(cfg.pretrain, pretrain_dir, progress=progress, allow_config_change=allow_config_change)
    target = dataclasses.replace(target, init_from=target.init_from or str(pretrain_dir), init_head=not public)
  return train_classifier(
    target, workdir, defense=cfg.defense, progress=progress, allow_config_change=allow_config_change
  )
