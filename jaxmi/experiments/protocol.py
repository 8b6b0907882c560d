"""``bin/jaxmi protocol``: one table of the standard protocol (targets x attacks) in one resumable command.

  bin/jaxmi protocol --config configs/protocol.py:what=table,table=lomma,public=celeba \
      --workdir runs/protocol_lomma_celeba --data-dir /data

The table's recipe (``ProtocolConfig.recipe``, configs/protocol.py) says, for each cell (a target and an attack),
the attack's argument and the argument of every network the attack reads (``recipe.cell``). The command then
  1. plans (nothing written): loads every config, with the ``*_overrides`` of its kind, and finds each network's
     workdir in ``models`` (runs/celeba_<...>): ready (it has summary.json: trained, or imported with
     ``bin/jaxmi import-torch``), to resume (checkpoints, no summary) or to make. A network to make with
     train_missing=false, or one the recipe cannot make (a path set by an override), is refused with one line
     naming it and the command that makes it, before anything is written;
  2. makes the missing networks, each in its own locked workdir, in order (evaluation model, targets, GANs,
     surrogates); every trainer resumes from its checkpoints after a kill;
  3. runs each attack in <workdir>/attacks/<target>_<method>: one with results.json is done and skipped, one with
     an attack_state/ resumes from it (``jaxmi.attacks.resume``), the others start;
  4. writes the table: <workdir>/table.md (the papers' layout: acc@1 and acc@5 as mean +/- std over restarts, KNN
     distance, FID, PRDC), table.csv, and Eval_results.csv (every run's row of the official evaluation's CSV).
Rerunning the same command after a kill continues where it stopped; a finished table is rewritten from the runs.
The protocol's data (``data``: CelebA's private split from its files, the public set) is what every attack is
judged on, so imported targets (whose workdirs name no dataset) are attacked on the same images as trained ones.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import logging
import math
import os
import typing
from pathlib import Path
from typing import Any

from jaxmi import config as config_lib
from jaxmi.data import DataConfig, Splits, load_splits
from jaxmi.errors import CheckpointError, ConfigError
from jaxmi.experiments.attack import EVAL_RESULTS_COLUMNS, AttackConfig
from jaxmi.experiments.defend import DefendConfig
from jaxmi.train.classifier import ClassifierConfig
from jaxmi.train.distill import SurrogateConfig
from jaxmi.train.gan import GANExperimentConfig
from jaxmi.workdir import Workdir, locked

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProtocolConfig:
  """A table: ``targets`` x ``attacks`` on ``data``, every network and attack configured by ``recipe``.

  Overrides of the networks and attacks a table makes are ``field=value`` items separated by spaces, applied to
  each config of that kind (as on a train-classifier / train-gan / distill / defend / attack command line), e.g.
  ``attack_overrides="identities=0:60 inversion.steps=300"``.
  """

  name: str = "protocol"
  recipe: str = ""  # the recipe file (configs/protocol.py) whose what=... arguments configure each piece
  public: typing.Literal["celeba", "ffhq", "facescrub"] = "celeba"  # the public set (the recipe's public=)
  data: DataConfig = DataConfig(dataset="celeba", image_size=64, channels=3, private_ids=(), public_ids=())
  targets: tuple[str, ...] = ("vgg16",)  # vgg16 | ir152 | facenet64, or <target>_<defense> (vgg16_bido)
  attacks: tuple[str, ...] = ("gmi",)  # gmi | kedmi | gmi_lomma | kedmi_lomma | plg
  steps: int = 0  # every attack's inversion.steps (LOMMA's table: 2400 for its baselines too); 0 = each one's own
  models: str = "runs"  # where the networks' workdirs are (the recipes' runs/<name>)
  train_missing: bool = True  # false: every network must be there already (trained or imported)
  fid_weights: str = ""  # pytorch-fid's Inception weights: the papers' FID (evaluation.fid_weights of every attack)
  target_overrides: str = ""  # targets (train-classifier)
  evaluator_overrides: str = ""  # the evaluation model (train-classifier)
  defense_overrides: str = ""  # defended targets (defend)
  gan_overrides: str = ""  # GAN priors (train-gan)
  surrogate_overrides: str = ""  # LOMMA's surrogates (distill)
  attack_overrides: str = ""  # every attack


@dataclasses.dataclass(frozen=True)
class Model:
  """A network a table reads: its workdir, the recipe argument and config that make it, and its state."""

  workdir: Path
  arg: str  # "" = no recipe makes it (a path an override set): it must be there
  config: Any
  state: str  # "ready" (summary.json), "resume" (checkpoints), "make"


@dataclasses.dataclass(frozen=True)
class Cell:
  """One attack of the table: a target x an attack, run in ``workdir``."""

  target: str
  method: str
  workdir: Path
  config: AttackConfig
  state: str  # "done" (results.json), "resume" (attack_state/), "run"


@dataclasses.dataclass(frozen=True)
class Plan:
  models: tuple[Model, ...]  # in the order they are made
  cells: tuple[Cell, ...]


# config type -> (the ProtocolConfig field with its overrides, the command that makes it)
KINDS = {
  "target": ("target_overrides", "bin/jaxmi train-classifier"),
  "evaluation": ("evaluator_overrides", "bin/jaxmi train-classifier"),
  "defense": ("defense_overrides", "bin/jaxmi defend"),
  "gan": ("gan_overrides", "bin/jaxmi train-gan"),
  "surrogate": ("surrogate_overrides", "bin/jaxmi distill"),
  "attack": ("attack_overrides", "bin/jaxmi attack"),
}
ORDER = ("evaluation", "target", "defense", "gan", "surrogate")  # what later networks need is made first


def _kind(cfg: Any) -> str:
  if isinstance(cfg, ClassifierConfig):
    return "evaluation" if cfg.role == "evaluation" else "target"
  if isinstance(cfg, DefendConfig):
    return "defense"
  if isinstance(cfg, GANExperimentConfig):
    return "gan"
  if isinstance(cfg, SurrogateConfig):
    return "surrogate"
  if isinstance(cfg, AttackConfig):
    return "attack"
  raise ConfigError(
    f"recipe: returned a {type(cfg).__name__}; expected a classifier, defense, GAN, surrogate or attack"
  )


def _name(cfg: Any) -> str:
  kind = _kind(cfg)
  return cfg.target.name if kind == "defense" else cfg.student.name if kind == "surrogate" else cfg.name


def _recipe(cfg: ProtocolConfig):
  """The recipe file as a module (its ``cell`` function maps a table cell to arguments)."""
  path = Path(cfg.recipe)
  if not cfg.recipe or not path.is_file():
    raise ConfigError(f"recipe: {cfg.recipe!r} is not a file; expected the protocol recipe (configs/protocol.py)")
  spec = importlib.util.spec_from_file_location(f"jaxmi_protocol_recipe_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "cell"):
    raise ConfigError(f"recipe: {path} defines no cell(target, method, public); expected the protocol recipe")
  return module


def _overrides(cfg: ProtocolConfig, kind: str) -> list[str]:
  return getattr(cfg, KINDS[kind][0]).split()


def _load(cfg: ProtocolConfig, arg: str, changes: dict | None = None) -> Any:
  """The recipe's config for ``arg``, then ``changes`` (the table's own settings), then the kind's overrides."""
  source = f"{cfg.recipe}:{arg}"
  loaded = config_lib.load_config(source)
  if changes:
    loaded = config_lib.replace(loaded, **changes)
  kind = _kind(loaded)
  loaded = config_lib.apply_overrides(loaded, _overrides(cfg, kind), source=f"{source} ({KINDS[kind][0]})")
  config_lib.check_choices(loaded, source=source)
  return loaded


def _relocate(path: str, models: str) -> str:
  """runs/<name> (the recipes' default place) -> <models>/<name>; other paths (an override's) stay."""
  return str(Path(models) / path.removeprefix("runs/")) if path.startswith("runs/") else path


def _relocated(cfg: Any, models: str) -> Any:
  """``cfg`` with every network it reads looked for in ``models``."""
  at = lambda p: _relocate(p, models) if p else p
  kind = _kind(cfg)
  if kind == "attack":
    return dataclasses.replace(
      cfg,
      target=at(cfg.target),
      evaluator=at(cfg.evaluator),
      gan=at(cfg.gan),
      surrogates=tuple(at(s) for s in cfg.surrogates),
    )
  if kind == "gan":
    return dataclasses.replace(cfg, target=at(cfg.target))
  if kind == "surrogate":
    return dataclasses.replace(cfg, teacher=at(cfg.teacher))
  return cfg


def _state(workdir: Path) -> str:
  if (workdir / "summary.json").is_file():
    return "ready"
  ckpt = workdir / "checkpoints"
  return "resume" if ckpt.is_dir() and any(ckpt.iterdir()) else "make"


def validate(cfg: ProtocolConfig) -> None:
  if not cfg.targets or not cfg.attacks:
    raise ConfigError(f"targets / attacks: a table needs at least one of each, got {cfg.targets} x {cfg.attacks}")
  for field in ("targets", "attacks"):
    values = getattr(cfg, field)
    if len(set(values)) != len(values):
      raise ConfigError(f"{field}: {values} lists one twice")
  if cfg.steps < 0:
    raise ConfigError(f"steps: expected >= 0 (0 = each attack's own), got {cfg.steps}")
  if cfg.fid_weights and not Path(cfg.fid_weights).is_file():
    raise ConfigError(f"fid_weights: {cfg.fid_weights} is not a file; expected pytorch-fid's Inception weights")


def plan(cfg: ProtocolConfig, workdir: str | Path) -> Plan:
  """Every config of the table loaded and every workdir's state read; nothing is written."""
  validate(cfg)
  recipe = _recipe(cfg)
  workdir = Path(workdir)
  models: dict[Path, Model] = {}
  cells = []
  for target in cfg.targets:
    for method in cfg.attacks:
      attack_arg, needs = recipe.cell(target, method, cfg.public)
      changes = {"inversion__steps": cfg.steps} if cfg.steps else {}
      if cfg.fid_weights:
        changes["evaluation__fid_weights"] = cfg.fid_weights
      attack = _relocated(_load(cfg, attack_arg, changes), cfg.models)
      makers = {_relocate(path, cfg.models): arg for path, arg in needs.items()}
      for path in (attack.evaluator, attack.target, attack.gan, *attack.surrogates):
        _add_model(cfg, models, Path(path), makers.get(path, ""))
        # A KEDMI / PLG-MI GAN and a surrogate read their target: it is made (or found) first.
        made_from = getattr(models[Path(path)].config, "target", None) or getattr(
          models[Path(path)].config, "teacher", None
        )
        if isinstance(made_from, str) and made_from and Path(made_from) not in models:
          _add_model(cfg, models, Path(made_from), makers.get(made_from, ""))
      run_dir = workdir / "attacks" / f"{target}_{method}"
      state = "done" if _finished(run_dir, attack) else "resume" if (run_dir / "attack_state").is_dir() else "run"
      cells.append(Cell(target=target, method=method, workdir=run_dir, config=attack, state=state))
  order = sorted(models.values(), key=lambda m: ORDER.index(_kind(m.config)) if m.config is not None else -1)
  return Plan(models=tuple(order), cells=tuple(cells))


def _finished(run_dir: Path, attack: AttackConfig) -> bool:
  """Whether ``run_dir`` holds this attack's results; the results of another config are refused (a table must not
  mix them in silently)."""
  import json

  path = run_dir / "results.json"
  if not path.is_file():
    return False
  try:
    saved = json.loads(path.read_text()).get("config") or {}
  except (OSError, ValueError, AttributeError):
    raise ConfigError(f"{path}: not the results.json of a finished attack; remove {run_dir} to rerun it") from None
  changed = [k for k in config_lib.diff(saved, config_lib.to_dict(attack)) if k != "name"]
  if changed:
    raise ConfigError(
      f"{path}: a finished attack of another config (differs in {', '.join(changed[:5])}); remove {run_dir} to "
      "rerun it, or use another --workdir"
    )
  return True


def _add_model(cfg: ProtocolConfig, models: dict, path: Path, arg: str) -> None:
  if path in models:
    return
  state = _state(path)
  config = _relocated(_load(cfg, arg), cfg.models) if arg else None
  if config is not None and Path(_relocate(f"runs/{_name(config)}", cfg.models)) != path:
    raise ConfigError(f"recipe: {arg} makes {_name(config)}, not {path.name} (a recipe bug)")
  if state != "ready":
    command = (
      f"{KINDS[_kind(config)][1]} --config {cfg.recipe}:{arg} --workdir {path}"
      if config is not None
      else "bin/jaxmi import-torch (or the command that trains it)"
    )
    if config is None:
      raise CheckpointError(f"{path}: no trained or imported network found (no summary.json); make it with {command}")
    if not cfg.train_missing:
      raise CheckpointError(
        f"{path}: no trained or imported network found (no summary.json) and train_missing=false; make it with "
        f"{command}, or import the published one with bin/jaxmi import-torch"
      )
  models[path] = Model(workdir=path, arg=arg, config=config, state=state)


def describe(p: Plan) -> str:
  """The plan as lines: each network and attack with what the command will do with it."""
  verbs = {"ready": "use", "resume": "resume", "make": "train", "done": "skip (done)", "run": "run"}
  lines = [f"networks ({len(p.models)}):"]
  lines += [f"  {verbs[m.state]:<16} {m.workdir}" + (f"  ({m.arg})" if m.arg else "") for m in p.models]
  lines.append(f"attacks ({len(p.cells)}):")
  lines += [f"  {verbs[c.state]:<16} {c.workdir}  ({c.method} on {c.target})" for c in p.cells]
  return "\n".join(lines)


def _make(model: Model, progress: bool) -> None:
  """Trains (or resumes) one network in its own locked workdir."""
  from jaxmi.experiments.make import make

  log.info(
    f"[protocol] {'resuming' if model.state == 'resume' else 'training'} {_kind(model.config)} {model.workdir} ({model.arg})"
  )
  with locked(model.workdir):
    make(model.config, model.workdir, progress=progress)


def natural_accuracy(target: str | Path, splits: Splits) -> float:
  """The target's top-1 on the private test split: its summary's, else (an imported one) measured here."""
  import json

  summary = json.loads((Path(target) / "summary.json").read_text())
  if isinstance(summary.get("natural_accuracy"), (int, float)):
    return float(summary["natural_accuracy"])
  from jaxmi.train import evaluate, load_classifier, make_eval_step

  clf = load_classifier(target)
  return float(evaluate(make_eval_step(clf.module), clf.variables, splits.private_test, 500)["acc"])


def run_protocol(
  cfg: ProtocolConfig,
  workdir: str | Path,
  *,
  splits: Splits | None = None,
  progress: bool = True,
  dry_run: bool = False,
) -> list[dict]:
  """Makes what the table needs, runs its attacks and writes the table; returns its rows. The caller holds the
  lock of ``workdir``. ``dry_run``: log the plan and return [] (nothing written)."""
  from jaxmi.experiments.attack import run_attack

  p = plan(cfg, workdir)
  log.info(
    f"[{cfg.name}] {len(cfg.targets)} target(s) x {len(cfg.attacks)} attack(s), public set {cfg.public}\n" + describe(p)
  )
  if dry_run:
    return []
  for model in p.models:
    if model.state != "ready":
      _make(model, progress)
  splits = splits if splits is not None else load_splits(cfg.data)
  for cell in p.cells:
    if cell.state == "done":
      log.info(f"[{cfg.name}] {cell.workdir}: done, skipped")
      continue
    run_attack(cell.config, cell.workdir, splits=splits, progress=progress)
  natural = {}
  for cell in p.cells:
    if cell.config.target not in natural:
      natural[cell.config.target] = natural_accuracy(cell.config.target, splits)
  rows = [table_row(cell, natural[cell.config.target]) for cell in p.cells]
  write_table(Workdir.of(workdir), cfg, rows, [c.workdir for c in p.cells])
  log.info(markdown(cfg, rows))
  log.info(f"[{cfg.name}] table in {Path(workdir).absolute()} (table.md, table.csv, Eval_results.csv)")
  return rows


# The table's CSV columns; acc/std/acc5/std5/knn/fid are the official Eval_results.csv's numbers.
COLUMNS = (
  "target",
  "defense",
  "natural_acc",
  "attack",
  "acc1",
  "acc1_std",
  "acc5",
  "acc5_std",
  "knn_dist",
  "fid",
  "feature_fid",
  "precision",
  "recall",
  "density",
  "coverage",
  "prdc_feature_space",
  "successful_samples",
  "identities",
  "restarts",
  "steps",
  "workdir",
)
LABELS = {"gmi": "GMI", "kedmi": "KEDMI", "gmi_lomma": "GMI + LOMMA", "kedmi_lomma": "KEDMI + LOMMA", "plg": "PLG-MI"}


def table_row(cell: Cell, natural: float) -> dict:
  """One cell's numbers: its Eval_results.csv row (the papers' acc ± std, KNN, FID) and results.json's PRDC."""
  import json

  result = json.loads((cell.workdir / "results.json").read_text())
  with open(cell.workdir / "Eval_results.csv", newline="") as f:
    official = next(csv.DictReader(f))
  number = lambda v: float(v) if v not in ("", None) else None
  prdc = result.get("prdc") or {}
  arch, _, defense = cell.target.partition("_")
  return {
    "target": arch,
    "defense": defense or "none",
    "natural_acc": natural,
    "attack": cell.method,
    "acc1": number(official["acc"]),
    "acc1_std": number(official["std"]),
    "acc5": number(official["acc5"]),
    "acc5_std": number(official["std5"]),
    "knn_dist": number(official["knn"]),
    "fid": number(official["fid"]),
    "feature_fid": result.get("feature_fid"),
    **{k: prdc.get(k) for k in ("precision", "recall", "density", "coverage")},
    "prdc_feature_space": result.get("prdc_feature_space", ""),
    "successful_samples": int(official["Succesful_samples"]),
    "identities": result.get("identities"),
    "restarts": result.get("restarts"),
    "steps": cell.config.inversion.steps,
    "workdir": str(cell.workdir),
  }


def _pct(v, s=None) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return ""
  return f"{100 * v:.2f}" + (f" ± {100 * s:.2f}" if s is not None else "")


def _num(v, digits: int = 2) -> str:
  return "" if v is None else f"{v:.{digits}f}"


def markdown(cfg: ProtocolConfig, rows: list[dict]) -> str:
  """The papers' layout (LOMMA Table 1): per target, one row per attack; accuracies in %."""
  inception = any(r["fid"] is not None for r in rows)
  fid_head = "FID ↓" if inception else "FID ↓ (eval. features)*"
  lines = [
    f"| target | defense | natural acc | attack | acc@1 ↑ | acc@5 ↑ | KNN dist ↓ | {fid_head} | precision | recall | "
    "density | coverage |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    fid = r["fid"] if inception else r["feature_fid"]
    lines.append(
      f"| {r['target']} | {r['defense']} | {_pct(r['natural_acc'])} | {LABELS.get(r['attack'], r['attack'])} | "
      f"{_pct(r['acc1'], r['acc1_std'])} | {_pct(r['acc5'], r['acc5_std'])} | {_num(r['knn_dist'])} | {_num(fid)} | "
      f"{_num(r['precision'], 3)} | {_num(r['recall'], 3)} | {_num(r['density'], 3)} | {_num(r['coverage'], 3)} |"
    )
  notes = [f"\n{cfg.name}: CelebA private, public set {cfg.public}; acc@1 / acc@5 in % as mean ± std over restarts."]
  if not inception:
    notes.append(
      "* No Inception weights (fid_weights / --fid-weights): the FID column is in the evaluation model's features, "
      "not comparable with the papers' FID."
    )
  return "\n".join(lines + notes)


def write_table(workdir: Workdir, cfg: ProtocolConfig, rows: list[dict], run_dirs: list[Path]) -> None:
  """table.md, table.csv and Eval_results.csv (every run's official row), each written atomically."""
  workdir.path.mkdir(parents=True, exist_ok=True)

  def atomic(name: str, write) -> None:
    tmp = workdir / f"{name}.tmp"
    with open(tmp, "w", newline="") as f:
      write(f)
    os.replace(tmp, workdir / name)

  atomic("table.md", lambda f: f.write(markdown(cfg, rows) + "\n"))

  def table_csv(f):
    out = csv.DictWriter(f, fieldnames=COLUMNS)
    out.writeheader()
    out.writerows([{k: "" if r[k] is None else r[k] for k in COLUMNS} for r in rows])

  def eval_results(f):
    out = csv.DictWriter(f, fieldnames=EVAL_RESULTS_COLUMNS)
    out.writeheader()
    for d in run_dirs:
      with open(d / "Eval_results.csv", newline="") as src:
        out.writerows(csv.DictReader(src))

  atomic("table.csv", table_csv)
  atomic("Eval_results.csv", eval_results)
