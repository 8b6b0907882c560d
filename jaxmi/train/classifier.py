"""Training and loading classifiers: targets, evaluation models, defended targets.

``train_classifier(config)`` trains on the private split with per-epoch evaluation on the
private test split, writes ``metrics.jsonl``, ``summary.json`` and ``curves.png`` to the
workdir, checkpoints every N steps and resumes from the latest checkpoint when run again.
Resuming yields the same parameters as an uninterrupted run: the data order, augmentation
and defense randomness are all functions of (seed, step).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmi import config as config_lib
from jaxmi.data import DataConfig, Splits, eval_batches, load_splits, steps_per_epoch, train_batches
from jaxmi.errors import CheckpointError, ConfigError, Interrupted
from jaxmi.nets import ModelConfig, build_classifier, init_variables, shape_signature
from jaxmi import plots
from jaxmi.train.checkpoint import Checkpointer, check_compatible
from jaxmi.train.loop import interrupted_message, run_steps
from jaxmi.train.optim import OptimConfig, make_optimizer
from jaxmi.train.state import TrainState, all_finite, first_nonfinite_leaf
from jaxmi.train.step import AugmentConfig, Defense, NoDefense, RunFacts, make_eval_step, make_train_step
from jaxmi.workdir import Workdir

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """How a classifier trains: length, batches, seed, logging, checkpoints, augmentation, which epoch is released."""

  epochs: int = 10
  batch_size: int = 64
  eval_batch_size: int = 500
  seed: int = 0
  log_every: int = 50  # steps between metric flushes (the only host syncs)
  checkpoint_every: int = 500  # steps
  keep_checkpoints: int = 3
  augment: AugmentConfig = AugmentConfig()
  # Which parameters the workdir releases (what load_classifier, evaluate and the attacks use):
  #   "last": the final epoch's (default). Selecting on the test split would leak the test data
  #     into model selection, and the reported natural accuracy would be optimistically biased.
  #   "best_test": the epoch with the best private-test accuracy, as the reference code keeps
  #     (saved to <workdir>/best/ after each improving epoch; the training checkpoints still hold
  #     the last state, so resume is unaffected).
  release: str = "last"


# fold_in tag of the key ``Defense.init_state`` receives (from the seed's key).
DEFENSE_KEY_TAG = 0x7D3F

# target: the attacked model; evaluation: the independent judge; surrogate: distilled from the
# target on public data (LOMMA's model augmentation).
ROLES = ("target", "evaluation", "surrogate")
RELEASES = ("last", "best_test")

# Config fields that may change between a run and its resumption: they do not change what is trained.
RESUMABLE_CHANGES = (
  "name",
  "workdir",  # a config field until the workdir became a run argument: older checkpoints record it
  "init_from",
  "train.epochs",
  "train.log_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "data.data_dir",
  "data.cache_dir",
  "data.download",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
  """``bin/jaxmi train-classifier``: one classifier (its role, data, model, optimiser and training)."""

  name: str = "classifier"
  role: str = "target"  # one of ROLES: recorded so later stages pick the right model
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  init_from: str = ""  # workdir of a trained classifier of the same architecture to start from
  # (CALoR's fine-tuning stage, TL-DMI); "" = random initialisation
  init_head: bool = True  # False: keep a fresh head (the init_from model was trained on other classes)


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained classifier ready for jitted use: ``module.apply(variables, x)``."""

  module: Any
  variables: dict
  config: ClassifierConfig
  num_classes: int
  image_shape: tuple[int, int, int]
  workdir: str = ""  # where it was loaded from

  def apply(self, variables: dict, images: jax.Array):
    return self.module.apply(variables, images, train=False)


def arch_meta(model_cfg: ModelConfig, num_classes: int, image_shape: tuple[int, ...]) -> dict:
  return {**config_lib.to_dict(model_cfg), "num_classes": num_classes, "image_shape": list(image_shape)}


def saved_data_config(saved: dict) -> DataConfig:
  """The data config stored in a checkpoint; saved paths missing on this machine are reset to its defaults.

  A cache_dir/data_dir that exists here is kept, so later stages (attack, distill, evaluate) reuse the
  target's prepared data instead of preparing it again in the default cache; --data-dir/--cache-dir still win.
  """
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
  for key in ("data_dir", "cache_dir", "public_data_dir"):
    # image_folder's data_dir names the dataset itself, so it stays (an error then names it).
    if key == "data_dir" and fields.get("dataset") == "image_folder":
      continue
    if fields.get(key) and not Path(fields[key]).expanduser().is_dir():
      fields[key] = None
  return DataConfig(**fields)


def run_facts(cfg: ClassifierConfig, num_examples: int, image_shape: tuple, num_classes: int) -> RunFacts:
  """The run's network, optimizer and step counts: what a defense may need to know about the run (an argument of
  its hooks, never part of its config). One place for ``train_classifier`` and the grid trainer."""
  spe = steps_per_epoch(num_examples, cfg.train.batch_size)
  total_steps = spe * cfg.train.epochs
  return RunFacts(
    steps_per_epoch=spe,
    total_steps=total_steps,
    batch_size=cfg.train.batch_size,
    num_examples=num_examples,
    module=build_classifier(cfg.model, num_classes),
    image_shape=image_shape,
    num_classes=num_classes,
    optimizer=make_optimizer(cfg.optim, spe, total_steps),
  )


def initial_variables(cfg: ClassifierConfig, facts: RunFacts) -> dict:
  """The step-0 variables: the seed's initialisation, or ``cfg.init_from``'s weights."""
  init_rng, _ = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
  variables = init_variables(facts.module, init_rng, facts.image_shape)
  return _start_from(cfg, variables, facts.num_classes) if cfg.init_from else variables


def initial_state(cfg: ClassifierConfig, variables: dict, defense: Defense, facts: RunFacts):
  """Step 0 of a run from ``variables`` with ``defense``: (TrainState, the optimiser the defense wraps around the
  run's). One definition for ``train_classifier`` and each setting of the grid trainer, which must start alike."""
  rng = jax.random.PRNGKey(cfg.train.seed)
  _, state_rng = jax.random.split(rng)
  tx = defense.optimizer(facts.optimizer, variables["params"], facts)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(variables["params"]),
    # Its own key: split(rng) above uses counters 0 and 1, so a tag far from them leaves every other key as it was.
    defense_state=defense.init_state(jax.random.fold_in(rng, DEFENSE_KEY_TAG), variables, facts),
    rng=state_rng,
  )
  return state, tx


def _validate(cfg: ClassifierConfig) -> None:
  t = cfg.train
  for field in ("epochs", "batch_size", "eval_batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
    if getattr(t, field) <= 0:
      raise ConfigError(f"train.{field}: expected a positive integer, got {getattr(t, field)}")
  if cfg.role not in ROLES:
    raise ConfigError(f"role: expected one of {', '.join(ROLES)}, got '{cfg.role}'")
  if t.release not in RELEASES:
    raise ConfigError(f"train.release: expected one of {', '.join(RELEASES)}, got '{t.release}'")


def changed_fields(saved: dict, current: dict, defaults: dict, resumable: tuple[str, ...]) -> list[str]:
  """Dotted config fields that differ, ignoring ``resumable`` ones and fields added since the checkpoint
  was written that still hold their default."""

  def lookup(d, key):
    for part in key.split("."):
      if not isinstance(d, dict) or part not in d:
        return None, False
      d = d[part]
    return d, True

  out = []
  for k in config_lib.diff(saved, current):
    if k in resumable:
      continue
    _, in_saved = lookup(saved, k)
    default, has_default = lookup(defaults, k)
    if not in_saved and has_default and lookup(current, k)[0] == default:
      continue
    out.append(k)
  return out


def refuse_config_change(name: str, where: str, changed: list[str], allow: bool) -> None:
  """Resuming under a changed config trains something neither config describes: refuse unless allowed."""
  if not changed:
    return
  fields = ", ".join(changed[:6]) + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else "")
  if not allow:
    raise ConfigError(
      f"{where}: the config differs from the checkpoint's in {fields}; resume with the same "
      "values, use another --workdir, or pass --allow-config-change"
    )
  log.warning(f"[{name}] resuming with a changed config (--allow-config-change): {fields}")


def check_restored_finite(state: Any, where: str) -> None:
  if not bool(jax.device_get(all_finite(state))):
    raise CheckpointError(
      f"{where}: holds non-finite values ({first_nonfinite_leaf(state)}); it was written by a "
      "run that diverged: delete it and train again"
    )


def evaluate(eval_step, variables: dict, split, batch_size: int) -> dict:
  """Top-1/top-5 accuracy and mean loss over a split; one host transfer at the end.

  Args:
    eval_step: ``make_eval_step(module)``: ``(variables, batch) -> sums`` of correct, correct5, loss and count.
    variables: the classifier's ``{"params", "batch_stats"}``.
    split: an ``ArraySplit``, gone through once in order (padding is masked out).
    batch_size: rows per batch.

  Returns:
    ``{"acc", "acc5", "loss", "count"}``: fractions in [0, 1], the mean loss and the number of examples.
  """
  totals = None
  for batch in eval_batches(split, batch_size):
    sums = eval_step(variables, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  n = max(float(totals["count"]), 1.0)
  return {"acc": totals["correct"] / n, "acc5": totals["correct5"] / n, "loss": totals["loss"] / n, "count": int(n)}


def train_classifier(
  cfg: ClassifierConfig,
  workdir: str | Path | Workdir,
  *,
  splits: Splits | None = None,
  defense: Defense = NoDefense(),
  progress: bool = True,
  stop_at_step: int | None = None,
  allow_config_change: bool = False,
  summarize: Callable[[dict, Any, dict], dict] | None = None,
) -> dict:
  """Trains (or resumes) ``cfg`` in ``workdir`` and returns the summary written to ``<workdir>/summary.json``.

  ``stop_at_step`` ends the run early as an interruption would (after saving), for resume tests.
  Resuming a checkpoint whose config differs in a field outside RESUMABLE_CHANGES is refused
  unless ``allow_config_change``. NaN/inf stops the run with NonFiniteError; no checkpoint,
  metric line or summary is written from that state.

  Args:
    cfg: what to train; validated first.
    workdir: where checkpoints, ``metrics.jsonl``, ``curves.png`` and ``summary.json`` go (the caller holds its lock).
    splits: the data; None loads ``cfg.data``.
    defense: the training-time defense (``NoDefense()``: none).
    progress: show a progress bar.
    stop_at_step: stop after this step as an interruption would (tests).
    allow_config_change: resume even if the config differs from the checkpoint's.
    summarize: ``(summary, module, released variables) -> summary``, applied before ``summary.json`` is written
      (distillation adds the surrogate's private accuracy this way, so the file is written once).

  Returns:
    The summary dict (natural accuracy, steps, timing, config), also in ``<workdir>/summary.json``.
  """
  _validate(cfg)
  workdir = Workdir.of(workdir)
  splits = splits if splits is not None else load_splits(cfg.data)
  train_split, test_split = splits.private_train, splits.private_test
  num_classes = splits.num_private_classes
  image_shape = tuple(train_split.images.shape[1:])
  log.info(
    f"[{cfg.name}] data: {splits.description}; {len(train_split)} train / {len(test_split)} test images, "
    f"{num_classes} classes, {image_shape}"
  )

  facts = run_facts(cfg, len(train_split), image_shape, num_classes)
  module, tx, spe, total_steps = facts.module, facts.optimizer, facts.steps_per_epoch, facts.total_steps
  defense.check(cfg, facts)

  variables = initial_variables(cfg, facts)
  if cfg.init_from:
    log.info(f"[{cfg.name}] starting from the weights in {cfg.init_from}" + ("" if cfg.init_head else " (fresh head)"))
  state, tx = initial_state(cfg, variables, defense, facts)
  meta = {
    "kind": "classifier",
    "defense": defense.name,
    "defense_config": config_lib.to_dict(defense),
    "arch": arch_meta(cfg.model, num_classes, image_shape),
    "signature": shape_signature(variables),
    "config": config_lib.to_dict(cfg),
  }

  ckpt = Checkpointer(workdir.checkpoints, every_steps=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    saved = ckpt.meta(start)
    check_compatible(saved, meta, f"{ckpt.directory}/{start}")  # another model: say that, not which fields differ
    changed = changed_fields(saved["config"], meta["config"], config_lib.to_dict(ClassifierConfig()), RESUMABLE_CHANGES)
    # Only fields the defense still has: older checkpoints also recorded run facts there (steps_per_epoch, layers).
    settings = lambda m: {k: v for k, v in m.get("defense_config", {}).items() if k in meta["defense_config"]}
    defense_of = lambda m: {"defense": {"name": m.get("defense"), **settings(m)}}
    changed += config_lib.diff(defense_of(saved), defense_of(meta))
    refuse_config_change(cfg.name, f"{ckpt.directory}/{start}", changed, allow_config_change)
    state = TrainState.from_dict(ckpt.restore(state.as_dict(), meta, start))
    check_restored_finite(state.as_dict(), f"{ckpt.directory}/{start}")
    log.info(f"[{cfg.name}] resuming from {ckpt.directory}/{start}")
  start = int(start or 0)
  # "best_test": the best epoch so far lives in its own checkpoint, with its test accuracy in the meta.
  best_ckpt = Checkpointer(workdir / "best", every_steps=1, keep=1) if cfg.train.release == "best_test" else None
  best_step = best_ckpt.latest_step() if best_ckpt is not None else None
  best = {"acc": best_ckpt.meta(best_step)["test_acc"], "step": best_step} if best_step is not None else None

  train_step = make_train_step(module, tx, defense, cfg.train.augment, facts)
  eval_step = make_eval_step(module)
  defense_eval = defense.evaluator(facts)  # the defense's own test metrics (Trap-MID: trapdoor accuracy), or None

  def evaluate_defense(variables, defense_state) -> dict:
    return defense_eval(variables, defense_state, test_split, cfg.train.eval_batch_size) if defense_eval else {}

  last_test = {}  # step -> evaluation, so the final summary reuses the last epoch's

  def epoch_end(state, step):
    nonlocal best
    test = last_test[step] = evaluate(eval_step, state.variables, test_split, cfg.train.eval_batch_size)
    # run_steps has checked the state is finite before calling this. Ties keep the earlier epoch,
    # so re-running an epoch after a kill never replaces the saved best with a different state.
    if best_ckpt is not None and (best is None or test["acc"] > best["acc"]) and np.isfinite(test["loss"]):
      best_meta = {**meta, "step": step, "epoch": step // spe, "test_acc": float(test["acc"])}
      best_ckpt.save(step, state.as_dict(), best_meta, force=True)
      best = {"acc": test["acc"], "step": step}
    own = {f"test/{k}": v for k, v in evaluate_defense(state.variables, state.defense_state).items()}
    return {"test/acc": test["acc"], "test/acc5": test["acc5"], "test/loss": test["loss"], **own}

  batches = train_batches(train_split, cfg.train.batch_size, cfg.train.seed, start_step=start)
  t0 = time.time()
  try:
    result = run_steps(
      state,
      name=cfg.name,
      step_fn=train_step,
      next_input=lambda: next(batches),
      start=start,
      total=total_steps,
      steps_per_epoch=spe,
      ckpt=ckpt,
      meta=meta,
      writer=workdir.metrics,
      log_every=cfg.train.log_every,
      metric_prefix="train/",
      epoch_end=epoch_end,
      progress=progress,
      stop_at_step=stop_at_step,
      postfix_keys=("train/loss", "train/acc", "test/acc"),
    )
  finally:
    batches.close()
    if best_ckpt is not None:
      best_ckpt.close()
  elapsed = time.time() - t0
  if result.stopped_early:  # by Ctrl-C or stop_at_step, after a checkpoint
    raise Interrupted(interrupted_message(result.step, ckpt), result.step)
  state, step = result.state, result.step

  # A run that was already complete trained no step this time, so nothing is cached.
  test = last_test.get(step) or evaluate(eval_step, state.variables, test_split, cfg.train.eval_batch_size)
  released = {
    "released": cfg.train.release,
    "released_step": step,
    "released_epoch": step // spe,
    "last_epoch_accuracy": test["acc"],
  }
  variables, defense_state = state.variables, state.defense_state
  if best_ckpt is not None:
    best_ckpt = Checkpointer(workdir / "best", create=False)
    best_meta = best_ckpt.meta()
    best_state = best_ckpt.restore(state.as_dict(), meta)
    best_ckpt.close()
    variables = {"params": best_state["params"], "batch_stats": best_state["batch_stats"]}
    defense_state = best_state["defense_state"]  # the released model's triggers, not the last epoch's
    test = evaluate(eval_step, variables, test_split, cfg.train.eval_batch_size)
    released.update(
      released_step=best_meta["step"], released_epoch=best_meta["epoch"], released_checkpoint=str(best_ckpt.directory)
    )
  train_eval = evaluate(eval_step, variables, train_split, cfg.train.eval_batch_size)
  summary = {
    "name": cfg.name,
    "role": cfg.role,
    "defense": defense.name,
    "defense_config": config_lib.to_dict(defense),
    **defense.report(facts, step),
    **evaluate_defense(variables, defense_state),
    "natural_accuracy": test["acc"],
    "natural_accuracy_top5": test["acc5"],
    "test_loss": test["loss"],
    **released,
    "train_accuracy": train_eval["acc"],
    "test_images": test["count"],
    "train_images": len(train_split),
    "num_classes": num_classes,
    "steps": step,
    "epochs": cfg.train.epochs,
    "train_seconds_this_run": round(elapsed, 2),
    "resumed_from_step": start,
    "data": splits.description,
    "checkpoints": str(ckpt.directory),
    "config": config_lib.to_dict(cfg),
  }
  if summarize is not None:
    summary = summarize(summary, module, variables)
  plots.training_curves(
    workdir.metrics.records,
    workdir / "curves.png",
    f"{cfg.name}: test top-1 {100 * test['acc']:.2f}%",
  )
  workdir.write_json("summary.json", summary)  # last: a kill before it leaves a run that resumes
  measured = "test-split agreement with the target" if cfg.role == "surrogate" else "natural (private test) accuracy"
  if cfg.train.release == "best_test":
    measured += f" of the best test epoch ({released['released_epoch']})"
  log.info(
    f"[{cfg.name}] {measured} {100 * test['acc']:.2f}% (top-5 {100 * test['acc5']:.2f}%), "
    f"train accuracy {100 * train_eval['acc']:.2f}%, {step} steps, {elapsed:.1f}s this run; "
    f"results in {workdir}"
  )
  return summary


def _start_from(cfg: ClassifierConfig, variables: dict, num_classes: int) -> dict:
  """``variables`` with the weights of ``cfg.init_from`` (all of them, or all but the head)."""
  start_from = load_classifier(cfg.init_from)
  loaded = jax.tree.map(jnp.asarray, start_from.variables)
  if not cfg.init_head:  # keep this model's fresh head; take everything else
    # VGG's BatchNorm1d normalises the flattened conv output for the classifier: it belongs to the head,
    # and the reference (TL-DMI) always trains a fresh one. The CNN's bn_feat follows its fc_feat and is kept.
    fresh = {"head"} | ({"bn_feat"} if "fc_feat" not in variables["params"] else set())
    keep_fresh = lambda col: {k: variables[col][k] for k in fresh if k in variables[col]}
    loaded = {
      col: {**{k: v for k, v in tree.items() if k not in fresh}, **keep_fresh(col)} for col, tree in loaded.items()
    }
  if shape_signature(loaded) != shape_signature(variables):
    raise ConfigError(
      f"init_from: {cfg.init_from} holds a {start_from.config.model.arch} model whose parameters "
      f"do not match model {cfg.model.arch} with {num_classes} classes; it must be the same "
      "architecture" + (" and head" if cfg.init_head else "")
    )
  return loaded


MAKES_ROLE = {
  None: ("classifier", "train-classifier"),
  "target": ("target classifier", "train-classifier"),
  "evaluation": ("evaluation classifier", "train-classifier"),
  "surrogate": ("surrogate", "distill"),
}


def released_checkpointer(workdir: str | Path, *, expect_role: str | None = None) -> Checkpointer:
  """The checkpoints a classifier workdir releases (``best/`` under train.release=best_test); creates nothing."""
  workdir = Path(workdir)
  if not (workdir / "checkpoints").is_dir():
    what, command = MAKES_ROLE.get(expect_role, MAKES_ROLE[None])
    raise CheckpointError(f"{workdir}: no trained {what} here (no checkpoints/); train one with bin/jaxmi {command}")
  ckpt = Checkpointer(workdir / "checkpoints", create=False)
  release = ckpt.meta().get("config", {}).get("train", {}).get("release", "last")
  if release == "best_test" and (workdir / "best").is_dir():
    ckpt.close()
    ckpt = Checkpointer(workdir / "best", create=False)
  return ckpt


def load_classifier(workdir: str | Path, *, expect_role: str | None = None) -> Classifier:
  """Rebuilds a trained classifier from its workdir's released checkpoint (see TrainConfig.release).

  Creates nothing; a missing workdir, a corrupt checkpoint or non-finite parameters are one-line CheckpointErrors.

  Args:
    workdir: the directory ``train_classifier`` (or ``distill``) wrote.
    expect_role: refuse a model of another role (ConfigError); None accepts any.

  Returns:
    A ``Classifier`` holding the module, its variables, the saved config, the class count and the input shape.
  """
  ckpt = released_checkpointer(workdir, expect_role=expect_role)
  step = ckpt.latest_step()
  meta = ckpt.meta(step)
  if meta.get("kind") != "classifier":
    raise ConfigError(f"{ckpt.directory}: holds a '{meta.get('kind')}' checkpoint; expected a classifier")
  saved = meta["config"]
  model_cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["model"].items()})
  arch = meta["arch"]
  if expect_role is not None and saved.get("role") != expect_role:
    raise ConfigError(f"{ckpt.directory}: is a '{saved.get('role')}' model; expected a '{expect_role}' model")
  module = build_classifier(model_cfg, arch["num_classes"])
  image_shape = tuple(arch["image_shape"])
  abstract = jax.eval_shape(lambda: init_variables(module, jax.random.PRNGKey(0), image_shape))
  expected = {**meta, "signature": shape_signature(abstract)}
  state = ckpt.restore(None, expected, step)  # None: the saved structure; only params and statistics are used
  ckpt.close()
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  check_restored_finite(variables, f"{ckpt.directory}/{step}")
  cfg = config_lib.replace(
    ClassifierConfig(), name=saved["name"], role=saved["role"], model=model_cfg, data=saved_data_config(saved["data"])
  )
  return Classifier(module, variables, cfg, arch["num_classes"], image_shape, str(workdir))
