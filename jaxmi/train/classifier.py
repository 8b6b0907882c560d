"""Training and loading classifiers: targets, evaluation models, defended targets.

``train_classifier(config)`` trains on the private split with per-epoch evaluation on the
private test split, writes ``metrics.jsonl``, ``summary.json`` and ``curves.png`` to the
workdir, checkpoints every N steps and resumes from the latest checkpoint when run again.
Resuming yields the same parameters as an uninterrupted run: the data order, augmentation
and defense randomness are all functions of (seed, step).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxmi import config as config_lib
from jaxmi.data import DataConfig, Splits, eval_batches, load_splits, steps_per_epoch, train_batches
from jaxmi.errors import ConfigError
from jaxmi.nets import ModelConfig, build_classifier, init_variables, shape_signature
from jaxmi import records
from jaxmi.train.checkpoint import Checkpointer
from jaxmi.train.loop import interrupted_message, run_steps
from jaxmi.train.optim import OptimConfig, make_optimizer
from jaxmi.train.state import TrainState
from jaxmi.train.step import AugmentConfig, Defense, make_eval_step, make_train_step


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  epochs: int = 10
  batch_size: int = 64
  eval_batch_size: int = 500
  seed: int = 0
  log_every: int = 50               # steps between metric flushes (the only host syncs)
  checkpoint_every: int = 500       # steps
  keep_checkpoints: int = 3
  augment: AugmentConfig = AugmentConfig()


# target: the attacked model; evaluation: the independent judge; surrogate: distilled from the
# target on public data (LOMMA's model augmentation).
ROLES = ("target", "evaluation", "surrogate")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
  name: str = "classifier"
  role: str = "target"              # one of ROLES: recorded so later stages pick the right model
  workdir: str = "runs/classifier"
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  init_from: str = ""               # workdir of a trained classifier of the same architecture to start from
                                    # (CALoR's fine-tuning stage, TL-DMI); "" = random initialisation
  init_head: bool = True            # False: keep a fresh head (the init_from model was trained on other classes)


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained classifier ready for jitted use: ``module.apply(variables, x)``."""
  module: Any
  variables: dict
  config: ClassifierConfig
  num_classes: int
  image_shape: tuple[int, int, int]

  def apply(self, variables: dict, images: jax.Array):
    return self.module.apply(variables, images, train=False)


def arch_meta(model_cfg: ModelConfig, num_classes: int, image_shape: tuple[int, ...]) -> dict:
  return {**config_lib.to_dict(model_cfg), "num_classes": num_classes, "image_shape": list(image_shape)}


def saved_data_config(saved: dict) -> DataConfig:
  """The data config stored in a checkpoint, with machine-specific paths reset to this machine's defaults."""
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
  if fields.get("dataset") != "image_folder":
    fields["data_dir"] = None  # image_folder's data_dir names the dataset itself, so it stays
  fields["cache_dir"] = None
  return DataConfig(**fields)


def _validate(cfg: ClassifierConfig) -> None:
  t = cfg.train
  for field in ("epochs", "batch_size", "eval_batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
    if getattr(t, field) <= 0:
      raise ConfigError(f"train.{field}: expected a positive integer, got {getattr(t, field)}")
  if cfg.role not in ROLES:
    raise ConfigError(f"role: expected one of {', '.join(ROLES)}, got '{cfg.role}'")


def evaluate(eval_step, variables: dict, split, batch_size: int) -> dict:
  """Top-1/top-5 accuracy and mean loss over a split; one host transfer at the end."""
  totals = None
  for batch in eval_batches(split, batch_size):
    sums = eval_step(variables, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  n = max(float(totals["count"]), 1.0)
  return {"acc": totals["correct"] / n, "acc5": totals["correct5"] / n, "loss": totals["loss"] / n, "count": int(n)}


def train_classifier(cfg: ClassifierConfig, *, splits: Splits | None = None, defense: Defense = Defense(),
                     progress: bool = True, stop_at_step: int | None = None, log=print) -> dict:
  """Trains (or resumes) ``cfg`` and returns the summary written to ``<workdir>/summary.json``.

  ``stop_at_step`` ends the run early as an interruption would (after saving), for resume tests.
  """
  _validate(cfg)
  workdir = Path(cfg.workdir)
  splits = splits if splits is not None else load_splits(cfg.data)
  train_split, test_split = splits.private_train, splits.private_test
  num_classes = splits.num_private_classes
  image_shape = tuple(train_split.images.shape[1:])
  log(f"[{cfg.name}] data: {splits.description}; {len(train_split)} train / {len(test_split)} test images, "
      f"{num_classes} classes, {image_shape}")

  module = build_classifier(cfg.model, num_classes) if defense.head(num_classes) is None else \
      dataclasses.replace(build_classifier(cfg.model, num_classes), head=defense.head(num_classes))
  spe = steps_per_epoch(len(train_split), cfg.train.batch_size)
  total_steps = spe * cfg.train.epochs
  defense.check(cfg)
  defense = defense.bind(spe, total_steps, module=module, image_shape=image_shape)
  tx = make_optimizer(cfg.optim, spe, total_steps)

  rng = jax.random.PRNGKey(cfg.train.seed)
  init_rng, state_rng = jax.random.split(rng)
  variables = init_variables(module, init_rng, image_shape)
  if cfg.init_from:
    variables = _start_from(cfg, variables, num_classes)
    log(f"[{cfg.name}] starting from the weights in {cfg.init_from}" + ("" if cfg.init_head else " (fresh head)"))
  tx = defense.optimizer(tx, variables["params"])
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                     batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                     defense_state=defense.init_state(variables), rng=state_rng)
  meta = {"kind": "classifier", "defense": defense.name, "defense_config": config_lib.to_dict(defense), "arch": arch_meta(cfg.model, num_classes, image_shape),
          "signature": shape_signature(variables), "config": config_lib.to_dict(cfg)}

  ckpt = Checkpointer(workdir / "checkpoints", every_steps=cfg.train.checkpoint_every,
                      keep=cfg.train.keep_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    changed = [k for k in config_lib.diff(ckpt.meta(start)["config"], meta["config"])
               if not k.startswith(("train.epochs", "train.log_every", "data.data_dir", "data.cache_dir"))]
    state = TrainState.from_dict(ckpt.restore(state.as_dict(), meta, start))
    log(f"[{cfg.name}] resuming from {ckpt.directory}/{start}" +
        (f" (config differs from the checkpoint's in: {', '.join(changed)})" if changed else ""))
  start = int(start or 0)

  train_step = make_train_step(module, tx, defense, cfg.train.augment)
  eval_step = make_eval_step(module)

  last_test = {}  # step -> evaluation, so the final summary reuses the last epoch's

  def epoch_end(state, step):
    test = last_test[step] = evaluate(eval_step, state.variables, test_split, cfg.train.eval_batch_size)
    return {"test/acc": test["acc"], "test/acc5": test["acc5"], "test/loss": test["loss"]}

  batches = train_batches(train_split, cfg.train.batch_size, cfg.train.seed, start_step=start)
  t0 = time.time()
  try:
    result = run_steps(state, name=cfg.name, step_fn=train_step, next_input=lambda: next(batches), start=start,
                       total=total_steps, steps_per_epoch=spe, ckpt=ckpt, meta=meta,
                       writer=records.JsonlWriter(workdir / "metrics.jsonl"), log_every=cfg.train.log_every,
                       metric_prefix="train/", epoch_end=epoch_end, progress=progress, stop_at_step=stop_at_step,
                       postfix_keys=("train/loss", "train/acc", "test/acc"))
  finally:
    batches.close()
  elapsed = time.time() - t0
  if result.by_user:
    raise KeyboardInterrupt(interrupted_message(result.step, ckpt))
  if result.stopped_early:
    return {"interrupted_at_step": result.step}
  state, step = result.state, result.step

  # A run that was already complete trained no step this time, so nothing is cached.
  test = last_test.get(step) or evaluate(eval_step, state.variables, test_split, cfg.train.eval_batch_size)
  train_eval = evaluate(eval_step, state.variables, train_split, cfg.train.eval_batch_size)
  summary = {
      "name": cfg.name, "role": cfg.role, "defense": defense.name, "defense_config": config_lib.to_dict(defense),
      **defense.report(steps=step, batch_size=cfg.train.batch_size, num_examples=len(train_split)),
      "natural_accuracy": test["acc"], "natural_accuracy_top5": test["acc5"], "test_loss": test["loss"],
      "train_accuracy": train_eval["acc"], "test_images": test["count"], "train_images": len(train_split),
      "num_classes": num_classes, "steps": step, "epochs": cfg.train.epochs,
      "train_seconds_this_run": round(elapsed, 2), "resumed_from_step": start,
      "data": splits.description, "checkpoints": str(ckpt.directory), "config": config_lib.to_dict(cfg),
  }
  records.write_json(workdir / "summary.json", summary)
  records.plot_curves(records.read_jsonl(workdir / "metrics.jsonl"), workdir / "curves.png",
                      f"{cfg.name}: test top-1 {100 * test['acc']:.2f}%")
  measured = "test-split agreement with the target" if cfg.role == "surrogate" else "natural (private test) accuracy"
  log(f"[{cfg.name}] {measured} {100 * test['acc']:.2f}% (top-5 {100 * test['acc5']:.2f}%), "
      f"train accuracy {100 * train_eval['acc']:.2f}%, {step} steps, {elapsed:.1f}s this run; "
      f"results in {workdir}")
  return summary


def _start_from(cfg: ClassifierConfig, variables: dict, num_classes: int) -> dict:
  """``variables`` with the weights of ``cfg.init_from`` (all of them, or all but the head)."""
  start_from = load_classifier(cfg.init_from)
  loaded = jax.tree.map(jnp.asarray, start_from.variables)
  if not cfg.init_head:  # keep this model's fresh head; take everything else
    fresh_head = lambda col: {"head": variables[col]["head"]} if "head" in variables[col] else {}
    loaded = {col: {**{k: v for k, v in tree.items() if k != "head"}, **fresh_head(col)}
              for col, tree in loaded.items()}
  if shape_signature(loaded) != shape_signature(variables):
    raise ConfigError(f"init_from: {cfg.init_from} holds a {start_from.config.model.arch} model whose parameters "
                      f"do not match model {cfg.model.arch} with {num_classes} classes; it must be the same "
                      "architecture" + (" and head" if cfg.init_head else ""))
  return loaded


def load_classifier(workdir: str | Path, *, expect_role: str | None = None) -> Classifier:
  """Rebuilds a trained classifier from its workdir's latest checkpoint."""
  ckpt = Checkpointer(Path(workdir) / "checkpoints")
  meta = ckpt.meta()
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
  state = ckpt.restore(None, expected)  # None: the saved structure; only params and statistics are used
  ckpt.close()
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  cfg = config_lib.replace(ClassifierConfig(), name=saved["name"], role=saved["role"], workdir=str(workdir),
                           model=model_cfg, data=saved_data_config(saved["data"]))
  return Classifier(module, variables, cfg, arch["num_classes"], image_shape)
